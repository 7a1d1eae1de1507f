"""`ads index`: build the Tantivy BM25 index over docs.jsonl -> data/index/; `ads search` queries it."""

from __future__ import annotations

from ..method.search import Searcher, build
from ..paths import Paths


def run(params: dict, paths: Paths) -> dict:
    return build(paths.docs, paths.index, params["index"]["title_boost"])


def search(query: str, k: int = 5, paths: Paths | None = None) -> list[dict]:
    """Library entry point: search the project's index."""
    return Searcher((paths or Paths.here()).index).search(query, k)
