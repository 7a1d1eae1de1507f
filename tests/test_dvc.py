"""`dvc repro` on the tiny configuration, in a temporary copy of the repo: the whole pipeline,
then nothing, then only what an evaluate-only change touches."""

import os
import shutil
import subprocess

import pytest
import yaml

from ads_cli.jsonl import read_json
from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.model]


def sh(cwd, *cmd):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran(output):
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_runs_all_then_nothing_then_only_evaluate(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "ads_cli", repo / "ads_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "sources.lock.json", ".gitignore"):
        shutil.copy2(REPO / name, repo / name)
    shutil.copy2(REPO / "params.tiny.yaml", repo / "params.yaml")
    (repo / "data").mkdir()
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")

    first = sh(repo, "dvc", "repro")
    assert ran(first) == ["prepare", "index", "train", "evaluate"]
    evaluation = read_json(repo / "results/evaluation.json")
    assert evaluation["completed_tasks"] == evaluation["total_tasks"] > 0

    again = sh(repo, "dvc", "repro")
    assert ran(again) == [] and "up to date" in again

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["tie_epsilon"] = 0.2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran(sh(repo, "dvc", "repro")) == ["evaluate"]
    assert read_json(repo / "results/metrics.json")["metric"]["avg_score"] == evaluation["metrics"]["avg_score"]

    metrics = sh(repo, "dvc", "metrics", "show")
    assert "results/metrics.json" in metrics and "avg_score" in metrics
    plots = sh(repo, "dvc", "plots", "show", "--json")
    assert "plot_scores.json" in plots
