"""Where every artifact lives, relative to the project folder (the current directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import AdsError


@dataclass(frozen=True)
class Paths:
    root: Path

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
        return self.root / "results"

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

    def iteration(self, k: int) -> Path:
        return self.data / f"iter_{k}"

    def trajectories(self, k: int) -> Path:
        return self.iteration(k) / "trajectories.jsonl"

    def executions(self, k: int) -> Path:
        return self.iteration(k) / "executions.jsonl"

    @property
    def optimizer(self) -> Path:
        """The trained optimizer that `ads train` hands to `ads evaluate`."""
        return self.data / "optimizer"

    def check(self, params: dict) -> None:
        """Refuse, before any work, a relative path in params that leaves the project."""
        named = {"sources.cache_dir": params["sources"]["cache_dir"], "sources.lock": params["sources"]["lock"],
                 "lm.call_cache": params["lm"]["call_cache"], "prepare.docs": params["prepare"]["docs"],
                 "prepare.tasks": params["prepare"]["tasks"], "lm.policy": params["lm"]["policy"],
                 "lm.optimizer": params["lm"]["optimizer"]}
        for what, value in named.items():
            if value and not value.startswith(("pypi:", "hf:")):
                self.resolve(value, what)
