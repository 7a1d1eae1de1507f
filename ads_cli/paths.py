"""Where every artifact lives, relative to the project folder (the current directory).

Every file a stage reads or writes is named here, once; `require(path, command)` is the one
"run `ads X` first" check. `project_lock` keeps two runs out of one project folder.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import AdsError


@dataclass(frozen=True)
class Paths:
    root: Path
    results_dir: Path | None = None  # `ads evaluate --out`: the results written elsewhere than results/

    @classmethod
    def here(cls) -> "Paths":
        return cls(Path.cwd())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def prepared(self) -> Path:
        return self.data / "prepared"

    @property
    def docs(self) -> Path:
        return self.prepared / "docs.jsonl"

    @property
    def tasks_train(self) -> Path:
        return self.prepared / "tasks_train.jsonl"

    @property
    def tasks_test(self) -> Path:
        return self.prepared / "tasks_test.jsonl"

    @property
    def index(self) -> Path:
        return self.data / "index"

    @property
    def results(self) -> Path:
        return self.results_dir or self.root / "results"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def resolve(self, path: str | Path, what: str = "path") -> Path:
        """A path from params: relative ones are taken from the project folder and must stay
        inside it (`../x` is refused); an explicitly absolute path (or `~/...`) is taken as is."""
        p = Path(path).expanduser()
        if p.is_absolute():
            return p
        full = (self.root / p).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise AdsError(f"params: {what} {str(path)!r} points outside the project; write an absolute path if you mean it")
        return full

    # ------------------------------------------------------------ prepare, index

    @property
    def prepared_manifest(self) -> Path:
        return self.prepared / "manifest.json"

    @property
    def index_manifest(self) -> Path:
        return self.index / "manifest.json"

    # ------------------------------------------------------------ one iteration K of train

    def iteration(self, k: int) -> Path:
        return self.data / f"iter_{k}"

    def trajectories(self, k: int) -> Path:
        return self.iteration(k) / "trajectories.jsonl"

    def sample_manifest(self, k: int) -> Path:
        return self.iteration(k) / "sample_manifest.json"

    def executions(self, k: int) -> Path:
        return self.iteration(k) / "executions.jsonl"

    def execute_journal(self, k: int) -> Path:
        return self.iteration(k) / "execute.journal.jsonl"

    def execute_manifest(self, k: int) -> Path:
        return self.iteration(k) / "execute_manifest.json"

    def rewards(self, k: int) -> Path:
        return self.iteration(k) / "rewards.jsonl"

    def best(self, k: int) -> Path:
        return self.iteration(k) / "best.jsonl"

    def preferences(self, k: int) -> Path:
        return self.iteration(k) / "preferences.jsonl"

    def exemplars(self, k: int) -> Path:
        """The optimizer's learned exemplars after iteration K."""
        return self.iteration(k) / "optimizer_state.jsonl"

    def optimizer_lora(self, k: int) -> Path:
        """The optimizer's LoRA adapter after iteration K (`train.optimizer_update: sft`)."""
        return self.iteration(k) / "optimizer_lora"

    def train_manifest(self, k: int) -> Path:
        return self.iteration(k) / "train_manifest.json"

    # ------------------------------------------------------------ the trained optimizer

    @property
    def optimizer(self) -> Path:
        """The trained optimizer that `ads train` hands to `ads evaluate`."""
        return self.data / "optimizer"

    @property
    def optimizer_exemplars(self) -> Path:
        return self.optimizer / "state.jsonl"

    @property
    def optimizer_adapter(self) -> Path:
        return self.optimizer / "lora"

    @property
    def optimizer_manifest(self) -> Path:
        return self.optimizer / "manifest.json"

    # ------------------------------------------------------------ results

    @property
    def train_metrics(self) -> Path:
        return self.results / "train_metrics.json"

    @property
    def train_plot(self) -> Path:
        return self.results / "train_plot.json"

    @property
    def evaluation(self) -> Path:
        return self.results / "evaluation.json"

    @property
    def metrics(self) -> Path:
        return self.results / "metrics.json"

    @property
    def plot_scores(self) -> Path:
        return self.results / "plot_scores.json"

    @property
    def report(self) -> Path:
        return self.results / "report.md"

    @property
    def plots(self) -> Path:
        """The charts (PNG): train's and evaluate's, which report.md embeds."""
        return self.results / "plots"

    @property
    def evaluate_journal(self) -> Path:
        return self.results / "evaluate.journal.jsonl"

    def run_log(self, stage: str) -> Path:
        """What the last run of `stage` measured (timings, call-cache hits, resumed calls):
        kept beside the artifacts, never inside them, so that an artifact is a function of its
        inputs and params alone. With `ads evaluate --out DIR`, in DIR/logs/, so that the
        pipeline's run log stays as it is."""
        return (self.results_dir / "logs" if self.results_dir is not None else self.logs) / f"{stage}.json"

    def relative(self, path: str | Path) -> str:
        """`path` as the project sees it: relative to the project folder when inside it."""
        p = Path(path)
        return p.relative_to(self.root).as_posix() if p.is_absolute() and p.is_relative_to(self.root) else str(path)

    # ------------------------------------------------------------ checks

    @staticmethod
    def require(path: Path, command: str) -> Path:
        """`path`, which an earlier stage writes; if it is missing, say which command writes it."""
        if not Path(path).exists():
            raise AdsError(f"{path}: not found; run `{command}` first")
        return path

    def check(self, params: dict) -> None:
        """Refuse, before any work, a relative path in params that leaves the project."""
        named = {"sources.cache_dir": params["sources"]["cache_dir"], "sources.lock": params["sources"]["lock"],
                 "lm.call_cache": params["lm"]["call_cache"], "prepare.docs": params["prepare"]["docs"],
                 "prepare.tasks": params["prepare"]["tasks"], "lm.policy": params["lm"]["policy"],
                 "lm.optimizer": params["lm"]["optimizer"]}
        for what, value in named.items():
            if value and not value.startswith(("pypi:", "hf:")):
                self.resolve(value, what)


@contextmanager
def project_lock(root: Path) -> Iterator[None]:
    """Hold the project folder's lock for one run; a second run exits at once naming the holder.

    Two runs in one folder would both run every call and journal it twice. The lock is an
    `flock` on `.ads.lock`: the kernel drops it when its process dies, so a killed run never
    leaves a stale lock behind. The file keeps the holder's pid for the message.
    """
    path = Path(root) / ".ads.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise AdsError(f"{path}: another ads run (pid {holder}) is working in this project folder;"
                           f" wait for it to finish, or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
