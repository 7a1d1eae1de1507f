"""Failure behaviour: bad input, missing upstream artifacts, interruptions, determinism, limits, safety."""

import ast
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ads_cli.cli import app
from conftest import REPO, one_line_error

runner = CliRunner()


def copy_project(src: Path, dst: Path, keep_training: bool = True) -> Path:
    ignore = None if keep_training else shutil.ignore_patterns("iter_*", "optimizer", "results")
    shutil.copytree(src, dst, ignore=ignore)
    return dst


# ------------------------------------------------------------------ input validation

BAD_CONTENT = {
    "malformed JSON": (b'{"id": "a",\n', ":1: malformed JSON"),
    "empty file": (b"", "zero tasks"),
    "non-UTF-8": (b'{"id": "\xff"}\n', ":1: not valid UTF-8"),
    "wrong type": (b'{"id": 3, "name": "n", "metric": "exact", "observed": [], "heldout": []}\n', ":1: field 'id' must be a str"),
    "missing field": (b'{"id": "a", "name": "n", "metric": "exact", "observed": []}\n', ":1: field 'heldout' must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
@pytest.mark.parametrize("stage, artifact", [("sample", "tasks_train.jsonl"), ("evaluate", "tasks_test.jsonl")])
def test_bad_task_artifacts(trained, tmp_path, monkeypatch, case, stage, artifact):
    project = copy_project(trained.root, tmp_path / "p")
    monkeypatch.chdir(project)
    content, fragment = BAD_CONTENT[case]
    (project / "data/prepared" / artifact).write_bytes(content)
    one_line_error(runner.invoke(app, [stage]), fragment)


@pytest.mark.parametrize("content, fragment", [
    (b'{"trajectory_id": "t", "task_id": "task0", "items": [], "errors": []}\n', ":1: field 'cost' must be a number"),
    (b'not json\n', ":1: malformed JSON"),
])
def test_bad_executions_artifact(trained, tmp_path, monkeypatch, content, fragment):
    from ads_cli import params as params_mod
    from ads_cli.stages import train
    from ads_cli.errors import AdsError
    from ads_cli.paths import Paths

    project = copy_project(trained.root, tmp_path / "p")
    monkeypatch.chdir(project)
    (project / "data/iter_1/executions.jsonl").write_bytes(content)
    with pytest.raises(AdsError) as e:
        train.update(params_mod.load("params.yaml"), Paths(project), 1)
    assert fragment in str(e.value) and "executions.jsonl" in str(e.value)


def test_missing_upstream_artifacts_name_the_stage_to_run(project):
    one_line_error(runner.invoke(app, ["index"]), "run `ads prepare` first")
    one_line_error(runner.invoke(app, ["sample"]), "run `ads prepare` first")
    one_line_error(runner.invoke(app, ["execute"]), "run `ads sample --iter 1` first")
    one_line_error(runner.invoke(app, ["train"]), "run `ads prepare` first")
    one_line_error(runner.invoke(app, ["evaluate"]), "run `ads prepare` first")


# ------------------------------------------------------------------ limits and safety


@pytest.mark.parametrize("args, fragment", [
    (["--set", "index.top_k=-1"], "index.top_k must be >= 1"),
    (["--set", "train.iterations=0"], "train.iterations must be >= 1"),
    (["--set", "prepare.default_metric=bleu"], "unknown metric 'bleu'"),
    (["--max-cost", "0"], "execute.max_cost (--max-cost) must be a number > 0"),
    (["--set", "sources.lock=../elsewhere.json"], "points outside the project"),
])
def test_params_are_validated_before_any_work(project, args, fragment):
    one_line_error(runner.invoke(app, ["train", *args]), fragment)


def test_absolute_paths_are_allowed(project, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-lock.json"
    result = runner.invoke(app, ["train", "--set", f"sources.lock={outside}"])
    one_line_error(result, "run `ads prepare` first")  # got past the params check


def test_max_cost_stops_cleanly_and_keeps_what_is_done(trained, tmp_path, monkeypatch):
    project = copy_project(trained.root, tmp_path / "p")
    monkeypatch.chdir(project)
    it1 = project / "data/iter_1"
    expected = (it1 / "executions.jsonl").read_bytes()
    (it1 / "executions.jsonl").unlink()
    (it1 / "execute.journal.jsonl").unlink()
    result = runner.invoke(app, ["execute", "--max-cost", "1", "--set", "execute.journal_every=1"])
    one_line_error(result, "--max-cost 1 reached: 1/")
    assert (it1 / "execute.journal.jsonl").read_bytes().count(b"\n") == 2  # header + the one call paid for
    assert not (it1 / "executions.jsonl").exists()
    assert runner.invoke(app, ["execute"]).exit_code == 0
    assert (it1 / "executions.jsonl").read_bytes() == expected


def test_model_output_is_never_executed():
    for path in (REPO / "ads_cli").rglob("*.py"):
        tree = ast.parse(path.read_text())
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & {"eval", "exec", "compile", "__import__"}, path
        imports = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert "pickle" not in imports, path


# ------------------------------------------------------------------ determinism


ARTIFACTS = ["data/prepared/docs.jsonl", "data/prepared/tasks_train.jsonl", "data/prepared/tasks_test.jsonl",
             *[f"data/iter_{k}/{name}.jsonl" for k in (1, 2)
               for name in ("trajectories", "executions", "rewards", "best", "preferences", "optimizer_state")],
             "data/optimizer/state.jsonl", "results/train_metrics.json", "results/train_plot.json"]


def test_same_params_and_seed_give_byte_identical_artifacts(trained, tmp_path, monkeypatch):
    """A second run from scratch, with no call cache at all, writes the same bytes."""
    project = copy_project(trained.root, tmp_path / "p", keep_training=False)
    shutil.rmtree(project / "data/prepared")
    shutil.rmtree(project / "data/index")
    monkeypatch.chdir(project)
    for args in (["prepare", "--docs", "docs.jsonl", "--tasks", "tasks.jsonl"], ["index"],
                 ["train", "--iter", "2", "--no-cache", "--set", "train.min_reward=-1"]):
        assert runner.invoke(app, args).exit_code == 0
    for rel in ARTIFACTS:
        assert (project / rel).read_bytes() == (trained.root / rel).read_bytes(), rel


# ------------------------------------------------------------------ interruptions


def _kill_at_random_then_rerun(project: Path, args: list[str], seed: int, window: tuple[float, float]) -> None:
    """Kill a run at a random moment of `window` (seconds), then rerun it to the end.

    The fake model takes 0.05 s a request in the killed run, so that it lasts long enough to be
    killed midway (the rerun goes at full speed: the delay changes no answer); the call cache is
    the copy's own and starts empty, so that work is in flight.
    """
    (project / "calls.sqlite").unlink(missing_ok=True)
    cmd = [sys.executable, "-c", "from ads_cli.cli import app; app()", *args]
    env = dict(os.environ, ADS_FAKE_DELAY="0.05")
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(seed).uniform(*window))
    assert proc.poll() is None, "the run finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for path in project.rglob("*.tmp"):
        raise AssertionError(f"a partial file is visible: {path}")
    rerun = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    cache = sqlite3.connect(project / "calls.sqlite")
    assert cache.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("seed", [1])
def test_sigkill_during_train_then_rerun_matches(trained, tmp_path, seed):
    project = copy_project(trained.root, tmp_path / "p", keep_training=False)
    # a fresh call cache, so that the killed run really has work in flight
    args = ["train", "--iter", "1", "--set", "train.min_reward=-1", "--set", f"lm.call_cache={project / 'calls.sqlite'}"]
    _kill_at_random_then_rerun(project, args, seed, (1.2, 2.2))
    for name in ("trajectories", "executions", "rewards", "best", "optimizer_state"):
        rel = f"data/iter_1/{name}.jsonl"
        assert (project / rel).read_bytes() == (trained.root / rel).read_bytes(), rel


@pytest.mark.parametrize("seed", [2])
def test_sigkill_during_evaluate_then_rerun_matches(trained, tmp_path, monkeypatch, seed):
    reference = copy_project(trained.root, tmp_path / "ref")
    with monkeypatch.context() as m:  # the uninterrupted run, in this process (the killed one needs its own)
        m.chdir(reference)
        assert runner.invoke(app, ["evaluate"]).exit_code == 0
    project = copy_project(trained.root, tmp_path / "p")
    shutil.rmtree(project / "results", ignore_errors=True)
    args = ["evaluate", "--set", f"lm.call_cache={project / 'calls.sqlite'}"]
    _kill_at_random_then_rerun(project, args, seed, (1.2, 2.2))
    assert (project / "results/evaluation.json").read_bytes() == (reference / "results/evaluation.json").read_bytes()
    assert (project / "results/report.md").read_text() == (reference / "results/report.md").read_text()


# ------------------------------------------------------------------ one run per project folder


def test_a_second_run_in_the_same_folder_stops_and_a_killed_one_never_blocks(trained, tmp_path):
    project = copy_project(trained.root, tmp_path / "p")
    env = dict(os.environ, ADS_FAKE_DELAY="0.2")
    first = subprocess.Popen([sys.executable, "-c", "from ads_cli.cli import app; app()", "train", "--iter", "1", "--no-cache"],
                             cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        lock = project / ".ads.lock"  # the holder writes its pid there once it has the lock
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run([sys.executable, "-c", "from ads_cli.cli import app; app()", "evaluate"], cwd=project,
                                capture_output=True, text=True)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = [l for l in (second.stdout + second.stderr).splitlines() if l.strip()]
        assert len(lines) == 1 and f"another ads run (pid {first.pid})" in lines[0] and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed run's lock file is still there, and does not block
    assert (project / ".ads.lock").exists()
    rerun = subprocess.run([sys.executable, "-c", "from ads_cli.cli import app; app()", "evaluate"], cwd=project,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


def test_a_task_file_the_user_names_is_not_found_rather_than_advice(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(copy_project(trained.root, tmp_path / "p"))
    result = runner.invoke(app, ["evaluate", "--tasks", "missing.jsonl"])
    one_line_error(result, "missing.jsonl: not found")
    assert "ads prepare" not in result.output
