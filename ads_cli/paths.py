"""Where every artifact lives, relative to the project folder (the current directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    def logs(self) -> Path:
        return self.root / "logs"

    def resolve(self, path: str | Path) -> Path:
        """A path from params or a flag: relative ones are taken from the project folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

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
