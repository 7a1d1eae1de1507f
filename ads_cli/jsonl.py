"""JSONL and JSON artifacts: orjson, atomic writes, errors that name the file and line."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from .errors import AdsError


def _atomic_write_bytes(path: Path, chunks: Iterable[bytes]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A reader never sees a partial file, and a crash leaves the old file (or none) in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fresh_tmp_dir(dest: Path) -> Path:
    """An empty `<dest>.tmp` folder beside `dest`, to build a folder artifact in before `replace_dir`."""
    tmp = Path(dest).with_name(Path(dest).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, dest: Path) -> None:
    """Swap a completed folder in: the old one stays whole until the new one is in place."""
    old = Path(dest).with_name(Path(dest).name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if Path(dest).exists():
        Path(dest).rename(old)
    Path(tmp).rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Atomically write `records` one per line; returns how many were written."""
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for record in records:
            count += 1
            yield orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"

    _atomic_write_bytes(path, lines())
    return count


def write_json(path: Path, obj: Any) -> None:
    """Atomically write one JSON document, indented and with sorted keys (stable diffs)."""
    _atomic_write_bytes(path, [orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"])


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write_bytes(path, [data])


def write_text(path: Path, text: str) -> None:
    """Atomically write a text artifact (UTF-8), such as a report."""
    _atomic_write_bytes(path, [text.encode("utf-8")])


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise AdsError(f"{path}: file not found") from None
    except orjson.JSONDecodeError as e:
        raise AdsError(f"{path}: malformed JSON: {e}") from None


def parse_lines(lines: Iterable[bytes], label: str, validate: Callable[[dict], str | None] | None = None) -> Iterator[dict]:
    """Yield the records of JSONL lines; blank lines are skipped.

    Any problem is an `AdsError` naming `label:line`: not UTF-8, malformed JSON, a record that
    is not an object, or whatever `validate(record)` returns as an error message.
    """
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AdsError(f"{label}:{lineno}: not valid UTF-8") from None
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise AdsError(f"{label}:{lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise AdsError(f"{label}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if validate is not None:
            problem = validate(record)
            if problem:
                raise AdsError(f"{label}:{lineno}: {problem}")
        yield record


def iter_jsonl(path: Path, validate: Callable[[dict], str | None] | None = None) -> Iterator[dict]:
    """Yield the records of a JSONL file (see `parse_lines` for the errors)."""
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise AdsError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise AdsError(f"{path}: is a folder, expected a JSONL file") from None
    with f:
        yield from parse_lines(f, str(path), validate)


def read_jsonl(path: Path, validate: Callable[[dict], str | None] | None = None) -> list[dict]:
    return list(iter_jsonl(path, validate))


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
