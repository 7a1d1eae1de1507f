"""`Pipeline`: the whole ADS pipeline from Python, for notebooks.

    from ads_cli import Pipeline
    Pipeline.from_params("params.yaml").run()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import params as params_mod
from .paths import Paths, project_lock


@dataclass
class Pipeline:
    params: dict
    paths: Paths = field(default_factory=Paths.here)

    @classmethod
    def from_params(cls, path: str | Path = "params.yaml", overrides: list[str] | None = None, root: str | Path | None = None) -> "Pipeline":
        paths = Paths(Path(root)) if root else Paths.here()
        params = params_mod.load(path, overrides)
        paths.check(params)
        return cls(params, paths)

    def prepare(self, **kwargs) -> dict:
        from .stages import prepare

        with project_lock(self.paths.root):
            return prepare.run(self.params, self.paths, **kwargs)

    def index(self) -> dict:
        from .stages import index

        with project_lock(self.paths.root):
            return index.run(self.params, self.paths)

    def train(self, iterations: int | None = None) -> dict:
        from .stages import train

        with project_lock(self.paths.root):
            return train.run(self.params, self.paths, iterations)

    def evaluate(self) -> dict:
        from .stages import evaluate

        with project_lock(self.paths.root):
            return evaluate.run(self.params, self.paths)

    def run(self) -> dict:
        """prepare -> index -> train -> evaluate; returns the evaluation summary."""
        self.prepare()
        self.index()
        self.train()
        return self.evaluate()
