"""Shared fixtures: a project folder per test, and small data the tests build themselves.

The logic tests run on a fake model (tests/fake_backend, registered as the backend `fake`);
tests that need the real SmolLM2 are marked `model`.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

import orjson
import pytest
import yaml

from ads_cli import params as params_mod
from ads_cli.paths import Paths

REPO = Path(__file__).resolve().parent.parent
FAKE_BACKEND = Path(__file__).resolve().parent / "fake_backend"

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# the fake backend is a plugin on the path, here and in every subprocess a test starts
sys.path.insert(0, str(FAKE_BACKEND))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKE_BACKEND), os.environ.get("PYTHONPATH")) if p)
FAKE = ["lm.policy_backend=fake", "lm.optimizer_backend=fake"]


def tiny_params(*overrides: str, fake: bool = True) -> dict:
    """params.tiny.yaml with `overrides`, on the fake model unless `fake=False`."""
    return params_mod.load(REPO / "params.tiny.yaml", (FAKE if fake else []) + list(overrides))


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal but valid wheel, enough for `pip download --find-links` to accept it."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    dist = f"{stem}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return path


CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Brazil", "Brasília"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Greece", "Athens"),
]


def make_docs() -> list[dict]:
    docs = [
        {"id": f"c{i}", "title": country, "text": f"{country} is a country. Its capital city is {capital}.",
         "description": "Country", "topic": "Geography"}
        for i, (country, capital) in enumerate(CAPITALS)
    ]
    docs.append({"id": "film", "title": "2001: A Space Odyssey",
                 "text": "2001: A Space Odyssey is a 1968 epic science fiction film directed by Stanley Kubrick.",
                 "description": "1968 film", "topic": "Arts"})
    docs.append({"id": "kubrick", "title": "Stanley Kubrick", "text": "Stanley Kubrick was an American filmmaker.",
                 "description": "American filmmaker", "topic": "Arts"})
    docs.append({"id": "oneil", "title": "Eugene O'Neill", "text": "Eugene O'Neill was an American playwright.",
                 "description": "Playwright", "topic": "Arts"})
    return docs


def make_flat_tasks(n_tasks: int = 6, n_examples: int = 8, hard: bool = False) -> list[dict]:
    """One example per record, as a user would write them.

    `hard` tasks ask for an answer format the 135M policy gets wrong, so that the optimizer,
    seeing its scores of 0, asks for data rather than writing `none`.
    """
    records = []
    for t in range(n_tasks):
        for e in range(n_examples):
            country, capital = CAPITALS[(t + e) % len(CAPITALS)]
            if hard:
                records.append({"task": f"task{t}", "input": f"Which city is the seat of government of {country}? Answer as CITY/COUNTRY.",
                                "reference": f"{capital}/{country}", "metric": "contains"})
            else:
                records.append({"task": f"task{t}", "input": f"What is the capital of {country}? (variant {e})",
                                "reference": capital, "metric": "contains"})
    return records


@pytest.fixture
def project(tmp_path, monkeypatch) -> Paths:
    """An empty project folder with the tiny params on the fake model, as the current directory.

    The call cache is the test's own, so that no test answers from another's model calls.
    """
    monkeypatch.chdir(tmp_path)
    params = tiny_params(f"lm.call_cache={tmp_path / 'calls.sqlite'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return Paths(tmp_path)


@pytest.fixture
def user_files(project) -> tuple[Path, Path]:
    docs = write_jsonl(project.root / "my_docs.jsonl", make_docs())
    tasks = write_jsonl(project.root / "my_tasks.jsonl", make_flat_tasks())
    return docs, tasks


def train_project(root: Path, fake: bool = True) -> Paths:
    """Prepare a project from the small user files and train it for 2 iterations (tiny params)."""
    from typer.testing import CliRunner

    from ads_cli.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        params = tiny_params(f"lm.call_cache={root / 'calls.sqlite'}", fake=fake)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        write_jsonl(root / "docs.jsonl", make_docs())
        write_jsonl(root / "tasks.jsonl", make_flat_tasks(hard=True))
        runner = CliRunner()
        for args in (["prepare", "--docs", "docs.jsonl", "--tasks", "tasks.jsonl"], ["index"],
                     ["train", "--iter", "2", "--set", "train.min_reward=-1"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
    return Paths(root)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Paths:
    """A project trained for 2 iterations on the fake model, once per test session; copy it
    before changing its training (running `ads evaluate` in it is fine: every test that reads
    results writes them first)."""
    return train_project(tmp_path_factory.mktemp("trained"))


# a plain progress line (ads_cli.progress, outside a terminal): `what: 2/8 (5s, ETA 15s)`
PROGRESS_LINE = re.compile(r".+: \d+(/\d+)? \(\d+s(, ETA \d+s)?\)")


def one_line_error(result, fragment: str) -> str:
    """A CLI failure as the user sees it: exit code 2, no traceback, and one line holding
    `fragment`, which is returned. Work done before the failure may have printed plain progress
    lines (a step slower than 5 s, as on a loaded machine); they are not part of the error."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not PROGRESS_LINE.fullmatch(line)]
    assert len(lines) == 1 and fragment in lines[0], result.output
    return lines[0]
