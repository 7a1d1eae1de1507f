"""The architecture, checked: layers with imports only pointing down, no cycles, short modules,
and a dvc.yaml whose deps and params cover what each stage really uses."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ads_cli import params as params_mod
from conftest import REPO

PACKAGE = REPO / "ads_cli"
# top: the command line and the Python API; then stages, the method, the engine, base modules
LAYERS = {"cli": 4, "pipeline": 4, "stages": 3, "method": 2, "engine": 1}
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 4  # ads_cli/__init__.py: the lazy `Pipeline` attribute
    return LAYERS.get(parts[1], 0)


def imports(module: str) -> set[str]:
    """The ads_cli modules `module` imports, anywhere in it: at the top or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != module}
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_imports_point_down_and_only_train_calls_other_stages():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            if layer(target) > layer(module):
                wrong.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
            if (module.startswith("ads_cli.stages.") and target.startswith("ads_cli.stages.")
                    and module != "ads_cli.stages.train"):
                wrong.append(f"{module} imports the stage {target}: only train calls other stages")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_layering_check_catches_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a copy of the package with a method module importing a stage."""
    copy = tmp_path / "ads_cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "method" / "reward.py").open("a") as f:
        f.write("\n\ndef _late():\n    from ..stages import train  # noqa\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    modules = {module_name(p): p for p in copy.rglob("*.py")}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", modules)
    graph = {m: imports(m) for m in modules}
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", graph)
    assert "ads_cli.stages.train" in graph["ads_cli.method.reward"]
    with pytest.raises(AssertionError, match="imports ads_cli.stages.train"):
        test_imports_point_down_and_only_train_calls_other_stages()
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()


def test_modules_are_short():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# ------------------------------------------------------------------ dvc.yaml


DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += GRAPH[m]
        # importing a.b.c runs the package inits a.b and a first; ads_cli/__init__.py (the version
        # and the lazy Pipeline attribute) is left out: it changes no artifact
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]
    return seen


@pytest.mark.parametrize("stage", sorted(DVC))
def test_each_stage_declares_every_module_it_runs(stage):
    deps = [REPO / d for d in DVC[stage]["deps"]]
    missing = []
    for module in sorted(closure(f"ads_cli.stages.{stage}")):
        path = MODULES[module]
        if not any(path == d or d in path.parents for d in deps):
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"dvc.yaml stage {stage!r} runs these files but does not list them (or a folder of them): {missing}"
    assert all(d.exists() or d.is_relative_to(REPO / "data") for d in deps), "a dep names a file that is not there"
    assert DVC[stage]["cmd"].split()[:2] == ["ads", stage]


class Recorder(dict):
    """A params section that remembers which keys were read."""

    def __init__(self, section: str, values: dict, seen: set):
        super().__init__(values)
        self.section, self.seen = section, seen

    def __getitem__(self, key):
        self.seen.add(f"{self.section}.{key}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(f"{self.section}.{key}")
        return super().get(key, default)


def declared(stage: str) -> set[str]:
    out = set()
    for entry in DVC[stage].get("params", []):
        names = [entry] if isinstance(entry, str) else list(entry)
        out |= {n for n in names}
    return out


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_each_stage_declares_every_params_key_it_reads(stage, trained, tmp_path, monkeypatch):
    import importlib

    from ads_cli.paths import Paths

    project = tmp_path / "p"
    shutil.copytree(trained.root, project)
    monkeypatch.chdir(project)
    seen: set[str] = set()
    base = params_mod.load("params.yaml", ["train.iterations=1", "train.min_reward=-1"])
    params = {section: Recorder(section, values, seen) for section, values in base.items()}
    importlib.import_module(f"ads_cli.stages.{stage}").run(params, Paths(project))
    ok = declared(stage)
    undeclared = sorted(k for k in seen if k not in ok and k.split(".")[0] not in ok)
    assert not undeclared, f"dvc.yaml stage {stage!r} reads params it does not declare: {undeclared}"
