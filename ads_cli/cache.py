"""A persistent, content-addressed cache of model calls (SQLite, WAL).

The key is a hash of everything that decides a call's output: the weights' hash, the rendered
prompt, the decoding params and the seed. WAL mode keeps the file consistent when a process is
killed mid-write and lets many readers share it. A corrupt file is set aside and rebuilt.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from .progress import log


def call_key(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


class CallCache:
    def __init__(self, path: Path | None):
        """`path=None` disables the cache (every lookup misses, nothing is stored)."""
        self.path = Path(path) if path is not None else None
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("call cache %s is unreadable (%s); moved to %s and rebuilt", self.path, e, aside.name)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self.path.replace(aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        db.execute("SELECT count(*) FROM calls").fetchone()  # touches the pages: fails now if corrupt
        return db

    def get(self, key: str) -> Any | None:
        if self._db is None:
            self.misses += 1
            return None
        with self._lock:
            row = self._db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return orjson.loads(row[0])

    def peek(self, key: str) -> bool:
        """Whether `key` is stored; not counted as a hit or a miss."""
        if self._db is None:
            return False
        with self._lock:
            return self._db.execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, value: Any) -> None:
        if self._db is None:
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", (key, orjson.dumps(value)))

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "enabled": self._db is not None}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
