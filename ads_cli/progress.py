"""Progress and logging shared by every stage.

In a terminal: a rich progress bar with counts and ETA. Elsewhere (CI, pipes, `dvc repro` logs)
rich prints nothing until the end, so a plain line is logged every few seconds instead.
Full detail always goes to `logs/<stage>.log`; `-v` also puts it on the terminal.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("ads")
console = Console(stderr=True)


def setup_logging(stage: str, logs_dir: Path, verbose: bool = False) -> Path:
    """Send the `ads` logger to `logs/<stage>.log` (always) and to the terminal (with -v)."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / f"{stage}.log"
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    term = RichHandler(console=console, show_path=False, show_time=False)
    term.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.addHandler(term)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return path


class Tracker:
    """Advance with `step(n)`; shows rich progress in a TTY, plain lines every `every` s elsewhere."""

    def __init__(self, progress: Progress | None, task_id, description: str, total: int | None, every: float):
        self._progress, self._task_id = progress, task_id
        self.description, self.total, self.every = description, total, every
        self.done = 0
        self._start = self._last = time.monotonic()

    def step(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.update(self._task_id, advance=n)
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._plain_line(now)

    def _plain_line(self, now: float) -> None:
        elapsed = now - self._start
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and self.done:
            eta = f", ETA {elapsed / self.done * (self.total - self.done):.0f}s"
        print(f"{self.description}: {self.done}{total} ({elapsed:.0f}s{eta})", file=sys.stderr, flush=True)


_live: Progress | None = None  # rich allows one live display: nested trackers share it


@contextmanager
def track(description: str, total: int | None = None, every: float = 5.0) -> Iterator[Tracker]:
    global _live
    if not console.is_terminal:
        tracker = Tracker(None, None, description, total, every)
        yield tracker
        log.info("%s: %d done in %.1fs", description, tracker.done, time.monotonic() - tracker._start)
        return
    owner = _live is None
    if owner:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        _live = Progress(*columns, console=console, transient=False)
        _live.start()
    progress = _live
    task_id = progress.add_task(description, total=total)
    try:
        yield Tracker(progress, task_id, description, total, every)
    finally:
        if owner:
            progress.stop()
            _live = None
        else:
            progress.remove_task(task_id)  # inner steps come and go; the outer bar stays


# ------------------------------------------------------------------ where the time goes

_phase_seconds: dict[str, float] = collections.defaultdict(float)
_phase_stack: list[list] = []  # [name, since]: the innermost phase is the one the clock runs for


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the wall time spent inside as `name`, exclusively: while an inner phase runs (the
    `answer` API calling the model, say), the outer one's clock stops. `phase_seconds()` reads
    the totals; the stages write them to logs/<stage>.json."""
    now = time.perf_counter()
    if _phase_stack:
        outer = _phase_stack[-1]
        _phase_seconds[outer[0]] += now - outer[1]
    _phase_stack.append([name, now])
    try:
        yield
    finally:
        now = time.perf_counter()
        inner, since = _phase_stack.pop()
        _phase_seconds[inner] += now - since
        if _phase_stack:
            _phase_stack[-1][1] = now


def phase_seconds(total: float | None = None) -> dict[str, float]:
    """Seconds per phase since the last `reset_phases()`, largest first; with `total` (the run's
    wall time), what no phase covered is `other (Python, I/O)`."""
    out = {k: round(v, 2) for k, v in sorted(_phase_seconds.items(), key=lambda kv: -kv[1])}
    if total is not None:
        out["other (Python, I/O)"] = round(max(0.0, total - sum(_phase_seconds.values())), 2)
    return out


def reset_phases() -> None:
    """Start counting afresh; a phase still open counts from now on."""
    _phase_seconds.clear()
    now = time.perf_counter()
    for entry in _phase_stack:
        entry[1] = now
