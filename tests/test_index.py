import pytest
from hypothesis import given, settings, strategies as st

from ads_cli.method import search as index
from ads_cli.errors import AdsError
from conftest import make_docs, write_jsonl


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
    root = tmp_path_factory.mktemp("ix")
    docs = write_jsonl(root / "docs.jsonl", make_docs())
    index.build(docs, root / "index", title_boost=0.25)
    return index.Searcher(root / "index")


def test_title_query_finds_its_article_first(searcher):
    assert searcher.search("Kenya", 3)[0]["doc_id"] == "c2"
    assert searcher.search("1968 science fiction film by Stanley Kubrick", 3)[0]["title"] == "2001: A Space Odyssey"
    hit = searcher.search("Stanley Kubrick", 1)[0]
    assert set(hit) == {"doc_id", "title", "text", "score"}
    assert hit["text"] == "Stanley Kubrick was an American filmmaker."


def test_stemming(searcher):
    assert searcher.search("filmmakers", 1)[0]["doc_id"] == "kubrick"


@pytest.mark.parametrize("query", ["foo: bar", "O'Neil", 'an "unbalanced quote', "", "x" * 10_000,
                                   "word " * 2_000, "Müller café 東京 Ωμέγα", "AND OR NOT", "title:(", "*?~^[]{}!\\/"])
def test_any_text_is_safe(searcher, query):
    hits = searcher.search(query, 5)
    assert isinstance(hits, list) and len(hits) <= 5


def test_apostrophe_names_still_match(searcher):
    assert searcher.search("O'Neill", 1)[0]["doc_id"] == "oneil"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_sanitized_query_never_raises(searcher, text):
    assert len(index.sanitize_query(text).split()) <= index.MAX_QUERY_TOKENS
    searcher.search(text, 3)


def test_missing_docs_and_index_name_the_stage(tmp_path):
    with pytest.raises(AdsError, match="run `ads prepare` first"):
        index.build(tmp_path / "docs.jsonl", tmp_path / "index", 0.25)
    with pytest.raises(AdsError, match="run `ads index` first"):
        index.Searcher(tmp_path / "index")


def test_rebuild_replaces_the_index(tmp_path):
    docs = write_jsonl(tmp_path / "docs.jsonl", make_docs())
    index.build(docs, tmp_path / "index", 0.25)
    write_jsonl(docs, [{"id": "z", "title": "Zebra", "text": "A zebra is an animal."}])
    index.build(docs, tmp_path / "index", 0.25)
    s = index.Searcher(tmp_path / "index")
    assert s.search("Kenya", 3) == [] and s.search("zebra", 1)[0]["doc_id"] == "z"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "index"]
