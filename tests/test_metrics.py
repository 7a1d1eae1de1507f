import pytest
from hypothesis import given, strategies as st

from ads_cli.method.metrics import contains, exact, f1, normalize, score


def test_normalize():
    assert normalize("The  Eiffel-Tower!") == "eiffel tower"


@pytest.mark.parametrize("metric, answer, reference, expected", [
    ("exact", "Paris.", "paris", 1.0),
    ("exact", "It is Paris", "Paris", 0.0),
    ("contains", "The capital is Paris.", "Paris", 1.0),
    ("contains", "Parisian food", "Paris", 0.0),          # whole words only
    ("contains", "anything", "", 0.0),
    ("f1", "the cat sat", "cat sat down", 0.8),
    ("f1", "", "", 1.0),
    ("f1", "dog", "cat", 0.0),
    ("exact", "B", ["A", "B"], 1.0),                         # best over several references
])
def test_known_scores(metric, answer, reference, expected):
    assert score(metric, answer, reference) == pytest.approx(expected)


@given(st.text(max_size=60), st.text(max_size=60))
def test_scores_stay_in_unit_interval(answer, reference):
    for fn in (exact, contains, f1):
        assert 0.0 <= fn(answer, reference) <= 1.0


@given(st.text(max_size=60))
def test_an_answer_scores_one_against_itself_when_it_has_words(text):
    if normalize(text):
        assert exact(text, text) == contains(text, text) == f1(text, text) == 1.0
