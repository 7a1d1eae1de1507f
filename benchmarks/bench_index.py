"""Tantivy (ads index) against rank_bm25 (pure-Python BM25) on the real 10k corpus, same run.

Queries: each document's `description` field; the target is that document. Reports build time,
query latency p50/p95, recall@5 for both, and the speed ratios.

    pip install -e '.[bench]' && ads prepare && python benchmarks/bench_index.py [--queries 1000]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

from rank_bm25 import BM25Okapi

from ads_cli.method import search as index
from ads_cli.jsonl import read_jsonl


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", default="data/prepared/docs.jsonl")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    docs = read_jsonl(Path(args.docs))
    queries = [d for d in docs if d["description"].strip()]
    queries = random.Random(args.seed).sample(queries, min(args.queries, len(queries)))
    print(f"{len(docs)} docs, {len(queries)} queries (each doc's description; target = that doc), k=5")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index.build(Path(args.docs), Path(tmp) / "index", title_boost=0.25)
        tantivy_build = time.perf_counter() - t
        searcher = index.Searcher(Path(tmp) / "index")
        tantivy_lat, tantivy_hits = [], 0
        for d in queries:
            t = time.perf_counter()
            hits = searcher.search(d["description"], 5)
            tantivy_lat.append(time.perf_counter() - t)
            tantivy_hits += d["id"] in {h["doc_id"] for h in hits}

    tokenize = lambda s: re.findall(r"\w+", s.lower())
    t = time.perf_counter()
    bm25 = BM25Okapi([tokenize(d["title"] + " " + d["text"]) for d in docs])
    naive_build = time.perf_counter() - t
    naive_lat, naive_hits = [], 0
    for d in queries:
        t = time.perf_counter()
        scores = bm25.get_scores(tokenize(d["description"]))
        top = sorted(range(len(docs)), key=lambda i: -scores[i])[:5]
        naive_lat.append(time.perf_counter() - t)
        naive_hits += d["id"] in {docs[i]["id"] for i in top}

    n = len(queries)
    rows = [
        ("build (s)", tantivy_build, naive_build),
        ("query p50 (ms)", pct(tantivy_lat, 50) * 1e3, pct(naive_lat, 50) * 1e3),
        ("query p95 (ms)", pct(tantivy_lat, 95) * 1e3, pct(naive_lat, 95) * 1e3),
    ]
    print(f"{'':16}{'tantivy':>12}{'rank_bm25':>12}{'speed-up':>10}")
    for name, a, b in rows:
        print(f"{name:16}{a:12.3f}{b:12.3f}{b / a:9.1f}x")
    print(f"{'recall@5':16}{tantivy_hits / n:12.3f}{naive_hits / n:12.3f}")


if __name__ == "__main__":
    main()
