"""Search: a Tantivy BM25 index over docs.jsonl (`build`), and `Searcher.search(query, k)` over it.

Both fields use Tantivy's English stemmer (`en_stem`). `body` holds the title and the text
together (BM25 over the whole article); `title` again on its own, searched with a boost, so that
title words count extra. Measured on the 10k corpus, a body field plus a small title boost (0.25)
finds both entity and description queries better than title and text as separate fields. Queries are
reduced to word tokens before parsing: the Tantivy query language raises on user text such as
`foo: bar`, `O'Neil` or an unbalanced quote, and the user never means its operators here.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from pathlib import Path

import orjson
import tantivy

from ..errors import AdsError
from ..jsonl import fresh_tmp_dir, iter_jsonl, read_json, replace_dir, sha256_file, write_json
from ..paths import Paths
from ..progress import log, track

MAX_QUERY_TOKENS = 64  # a 10 kB query still answers fast; BM25 gains nothing from more words
_WORD = re.compile(r"\w+", re.UNICODE)
# the query parser treats these bare words as operators
_OPERATORS = {"AND", "OR", "NOT", "IN", "TO"}


def sanitize_query(text: str) -> str:
    """Word tokens only, lower-cased operators, at most MAX_QUERY_TOKENS; '' if none."""
    tokens = _WORD.findall(text or "")[:MAX_QUERY_TOKENS]
    return " ".join(t.lower() if t in _OPERATORS else t for t in tokens)


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("doc_id", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", stored=True, tokenizer_name="en_stem")
    builder.add_text_field("body", stored=True, tokenizer_name="en_stem")
    return builder.build()


def _validate_doc(record: dict) -> str | None:
    for field in ("id", "title", "text"):
        if not isinstance(record.get(field), str):
            return f"field {field!r} must be a string"
    return None


def build(docs_path: Path, index_dir: Path, title_boost: float, heap_bytes: int = 128 << 20, label: str | None = None) -> dict:
    """Build the index from scratch into a temporary folder, then swap it in; returns the manifest.

    The folder is a function of the docs and the title boost alone (the manifest names the docs
    by `label`, their path as the project sees it): the same docs give the same bytes.
    """
    Paths.require(docs_path, "ads prepare")
    tmp_dir = fresh_tmp_dir(index_dir)
    index = tantivy.Index(_schema(), path=str(tmp_dir))
    writer = index.writer(heap_size=heap_bytes, num_threads=1)
    count = 0
    with track("index: documents") as progress:
        for record in iter_jsonl(docs_path, _validate_doc):
            writer.add_document(tantivy.Document(doc_id=record["id"], title=record["title"], body=f"{record['title']}\n{record['text']}"))
            count += 1
            progress.step()
    if count == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise AdsError(f"{docs_path}: empty; run `ads prepare` again")
    writer.commit()
    writer.wait_merging_threads()
    del writer, index  # release the folder's files before renaming them
    name_segments_by_content(tmp_dir)
    manifest = {
        "stage": "index",
        "inputs": {"docs": {"path": label or str(docs_path), "sha256": sha256_file(docs_path)}},
        "params": {"title_boost": title_boost},
        "counts": {"docs": count},
    }
    write_json(tmp_dir / "manifest.json", manifest)
    replace_dir(tmp_dir, index_dir)  # the old index stays usable until the new one is complete
    log.info("index: %d docs", count)
    return manifest


def name_segments_by_content(index_dir: Path) -> None:
    """Rename each Tantivy segment after a hash of its files.

    Tantivy names segments with random UUIDs (in the file names, meta.json and .managed.json),
    so two builds from the same docs differ only in those names, and DVC would see a new
    output every time. The content itself is deterministic (one writer thread). The hash also
    covers the segment's position, so that two identical segments cannot collide.
    """
    meta_path, managed_path = index_dir / "meta.json", index_dir / ".managed.json"
    meta_text, managed = meta_path.read_text(), orjson.loads(managed_path.read_bytes())
    for position, segment in enumerate(orjson.loads(meta_text)["segments"]):
        old = uuid.UUID(segment["segment_id"])
        files = sorted(index_dir.glob(f"{old.hex}.*"))
        digest = hashlib.sha256(str(position).encode())
        for f in files:
            digest.update(f.suffix.encode() + b"\0" + f.read_bytes())
        new = uuid.UUID(digest.hexdigest()[:32])
        for f in files:
            f.rename(index_dir / f"{new.hex}{f.suffix}")
        meta_text = meta_text.replace(str(old), str(new))
        managed = [name.replace(old.hex, new.hex) for name in managed]
    meta_path.write_text(meta_text)
    managed_path.write_bytes(orjson.dumps(sorted(managed)))


class Searcher:
    """An open index. `search(query, k)` -> [{doc_id, title, text, score}], best first."""

    def __init__(self, index_dir: Path):
        self.manifest = read_json(Paths.require(Path(index_dir) / "manifest.json", "ads index"))
        self.title_boost = float(self.manifest["params"]["title_boost"])
        self._index = tantivy.Index.open(str(index_dir))
        self._index.reload()
        self._searcher = self._index.searcher()

    def search(self, query: str, k: int = 5) -> list[dict]:
        text = sanitize_query(query)
        if not text or k <= 0:
            return []
        parsed = self._index.parse_query(text, ["title", "body"], field_boosts={"title": self.title_boost})
        hits = []
        for score, address in self._searcher.search(parsed, k).hits:
            doc = self._searcher.doc(address)
            # stored fields come back as lists
            title = doc["title"][0]
            text = doc["body"][0][len(title) + 1:]
            hits.append({"doc_id": doc["doc_id"][0], "title": title, "text": text, "score": round(float(score), 4)})
        return hits
