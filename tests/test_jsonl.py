import os

import pytest
from hypothesis import given, settings, strategies as st

from ads_cli.errors import AdsError
from ads_cli.jsonl import read_jsonl, write_json, write_jsonl


def test_roundtrip_is_deterministic(tmp_path):
    records = [{"b": 1, "a": [1, 2]}, {"text": "Brasília 東京"}]
    write_jsonl(tmp_path / "a.jsonl", records)
    write_jsonl(tmp_path / "b.jsonl", records)
    assert read_jsonl(tmp_path / "a.jsonl") == records
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


@pytest.mark.parametrize("content, fragment", [
    (b'{"a": 1}\n{"a": \n', "f.jsonl:2: malformed JSON"),
    (b'{"a": 1}\n\n[1, 2]\n', "f.jsonl:3: expected a JSON object, got list"),
    (b'{"a": "\xff\xfe"}\n', "f.jsonl:1: not valid UTF-8"),
])
def test_errors_name_file_and_line(tmp_path, content, fragment):
    (tmp_path / "f.jsonl").write_bytes(content)
    with pytest.raises(AdsError) as e:
        read_jsonl(tmp_path / "f.jsonl")
    assert fragment in str(e.value)


def test_validator_message_gets_the_line(tmp_path):
    (tmp_path / "f.jsonl").write_bytes(b'{"id": "x"}\n{"id": 3}\n')
    check = lambda r: None if isinstance(r["id"], str) else "field 'id' must be a string"
    with pytest.raises(AdsError, match=r"f.jsonl:2: field 'id' must be a string"):
        read_jsonl(tmp_path / "f.jsonl", check)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"keep": True}])

    def records():
        yield {"new": 1}
        raise RuntimeError("stopped halfway")

    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    assert read_jsonl(path) == [{"keep": True}]
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_write_json_is_stable(tmp_path):
    write_json(tmp_path / "m.json", {"b": 2, "a": 1})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 1,\n  "b": 2\n}\n'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=5))
def test_any_records_roundtrip(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("rt") / "r.jsonl"
    write_jsonl(path, records)
    assert read_jsonl(path) == records
