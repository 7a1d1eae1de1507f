"""`ads index`: build the Tantivy BM25 index over docs.jsonl -> data/index/; `ads search` queries it."""

from __future__ import annotations

import time

from ..jsonl import write_json
from ..method.search import Searcher, build
from ..paths import Paths


def run(params: dict, paths: Paths) -> dict:
    started = time.monotonic()
    manifest = build(paths.docs, paths.index, params["index"]["title_boost"], label=paths.relative(paths.docs))
    run_info = {"timings": {"build_s": round(time.monotonic() - started, 3)}}
    write_json(paths.run_log("index"), run_info)
    return manifest | {"run": run_info}


def search(query: str, k: int = 5, paths: Paths | None = None) -> list[dict]:
    """Library entry point: search the project's index."""
    return Searcher((paths or Paths.here()).index).search(query, k)
