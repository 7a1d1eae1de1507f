from hypothesis import given, strategies as st

from ads_cli.apis import parse_pairs
from ads_cli.method.optimizer import build_prompt, error_kind, parse_trajectory, seed_exemplars

APIS = {"retrieve", "demonstrate", "answer"}


def test_parses_calls_until_end():
    calls, err = parse_trajectory("retrieve: Kenya\nanswer: Who directed Jaws?\nend\nretrieve: ignored", APIS, 3)
    assert err is None and calls == [{"api": "retrieve", "arg": "Kenya"}, {"api": "answer", "arg": "Who directed Jaws?"}]


def test_none_is_a_valid_empty_trajectory():
    assert parse_trajectory("none\nend", APIS, 3) == ([], None)


def test_calls_beyond_the_limit_are_dropped():
    calls, err = parse_trajectory("retrieve: a\nretrieve: b\nretrieve: c", APIS, 2)
    assert err is None and [c["arg"] for c in calls] == ["a", "b"]


def test_errors():
    errors = {text: parse_trajectory(text, APIS, 3)[1] for text in
              ("search: Kenya", "retrieve:   ", "I would look up Kenya", "", "retrieve: a\nnone")}
    assert errors == {
        "search: Kenya": "unknown API at line 1: 'search'",
        "retrieve:   ": "empty argument at line 1: retrieve",
        "I would look up Kenya": "not a call at line 1: 'I would look up Kenya' (expected 'api: argument')",
        "": "no calls (an empty trajectory is written 'none')",
        "retrieve: a\nnone": "none after calls at line 2",
    }
    assert sorted(error_kind(e) for e in errors.values()) == ["empty argument", "no calls", "none after calls", "not a call", "unknown API"]


@given(st.text(max_size=200))
def test_parser_never_raises_and_is_all_or_nothing(text):
    calls, err = parse_trajectory(text, APIS, 3)
    assert (err is None) or calls == []
    assert len(calls) <= 3
    assert all(c["api"] in APIS and c["arg"] for c in calls)


def test_prompt_shows_observed_never_heldout():
    task = {"id": "t", "name": "capitals", "category": "knowledge",
            "observed": [{"input": "What is the capital of Peru?", "reference": "Lima"}],
            "heldout": [{"input": "SECRET HELDOUT QUESTION", "reference": "SECRET"}]}
    prompt = build_prompt(task, [{"answer": "Cusco", "score": 0.0}], seed_exemplars(), ["retrieve: <q> -- passages"])
    assert "capital of Peru" in prompt and "model said: Cusco (score 0.0)" in prompt
    assert "SECRET" not in prompt
    assert prompt.endswith("Task: capitals (knowledge)\nExample: What is the capital of Peru? | correct: Lima | model said: Cusco (score 0.0)\nCalls:\n")
    assert all(e["seed"] for e in seed_exemplars())


def test_parse_pairs_is_robust():
    text = "Q: What is the opposite of hot?\nA: cold\n\n2. Question: Opposite of up?\nAnswer: down\nQ: dangling question"
    pairs, failed = parse_pairs(text)
    assert pairs == [("What is the opposite of hot?", "cold"), ("Opposite of up?", "down")] and failed == 1
    assert parse_pairs("no pairs here") == ([], 0)
