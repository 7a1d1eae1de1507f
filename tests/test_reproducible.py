"""DVC's promise, kept: every declared output is a function of its deps and params.

The tiny pipeline runs with `dvc repro` in two folders at different absolute paths, each with
its own empty call cache (on the fake model and small user files, so that this is a logic
test). Every declared output must come out byte for byte the same, the two dvc.lock files must
agree, and no declared output may contain the folder's absolute path.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from ads_cli.charts import CHARTS
from conftest import FAKE, REPO, make_docs, make_flat_tasks, tiny_params, write_jsonl

pytestmark = pytest.mark.dvc


def declared_outputs(dvc_yaml: dict) -> list[str]:
    out = []
    for stage in dvc_yaml["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                out.append(entry if isinstance(entry, str) else next(iter(entry)))
    return out


def files_of(root, rel: str) -> dict[str, bytes]:
    path = root / rel
    if path.is_file():
        return {rel: path.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def setup_project(root) -> None:
    shutil.copytree(REPO / "ads_cli", root / "ads_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "sources.lock.json", ".gitignore", ".dvcignore"):
        shutil.copy2(REPO / name, root / name)
    write_jsonl(root / "docs.jsonl", make_docs())
    write_jsonl(root / "tasks.jsonl", make_flat_tasks(hard=True))
    params = tiny_params("prepare.docs=docs.jsonl", "prepare.tasks=tasks.jsonl", "lm.call_cache=calls.sqlite")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data").mkdir()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    roots = [tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("elsewhere") / "deeper" / "second"]
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    script = "git init -q && dvc init -q && dvc repro"
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        setup_project(root)
    # the two folders run at the same time: independent projects, each with its own call cache
    runs = [subprocess.Popen(["bash", "-c", script], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for root in roots]
    for root, run in zip(roots, runs):
        output = run.communicate()[0]
        assert run.returncode == 0, f"{root}: {output}"
    return roots


def test_the_fake_model_is_what_ran(two_runs):
    params = yaml.safe_load((two_runs[0] / "params.yaml").read_text())
    assert [f"lm.policy_backend={params['lm']['policy_backend']}", f"lm.optimizer_backend={params['lm']['optimizer_backend']}"] == FAKE


def test_declared_outputs_and_dvc_lock_are_identical_in_two_folders(two_runs):
    a, b = two_runs
    outputs = declared_outputs(yaml.safe_load((a / "dvc.yaml").read_text()))
    assert {"data/prepared", "data/index", "data/optimizer", "results/evaluation.json"} <= set(outputs)
    for rel in outputs:
        fa, fb = files_of(a, rel), files_of(b, rel)
        assert fa, f"{rel}: nothing written"
        assert fa.keys() == fb.keys(), rel
        differ = [name for name in fa if fa[name] != fb[name]]
        assert not differ, f"these declared outputs differ between two folders: {differ}"
    assert (a / "dvc.lock").read_text() == (b / "dvc.lock").read_text()
    # what the runs measured is kept, beside the outputs
    assert (a / "logs" / "train.json").exists() and (a / "logs" / "evaluate.json").exists()


def test_no_declared_output_contains_the_project_folder(two_runs):
    for root in two_runs:
        for rel in declared_outputs(yaml.safe_load((root / "dvc.yaml").read_text())):
            for name, data in files_of(root, rel).items():
                assert str(root).encode() not in data, f"{name} contains the absolute path {root}"
                assert str(root.resolve()).encode() not in data, f"{name} contains the absolute path {root.resolve()}"


def test_dvc_exp_compares_two_settings(two_runs, tmp_path):
    """`dvc exp run -S ...` in a clone, then `dvc exp show` lists the metrics of both runs: the
    small results files are in git (not ignored), so a commit and an experiment hold them."""
    import json

    shutil.copytree(two_runs[0], tmp_path, dirs_exist_ok=True, symlinks=True)  # a project after `dvc repro`
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")

    def run(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout

    shutil.copy2(REPO / ".dvc/config", tmp_path / ".dvc/config")  # the project's DVC settings: the offline plots page
    shutil.copytree(REPO / ".dvc/plots", tmp_path / ".dvc/plots")
    run("git add -A && git commit -qm baseline")  # the copy is a project after `dvc repro`
    assert not run("git status --porcelain")  # the run's results are committed, nothing left over
    run("dvc exp run -q -n cheaper -S train.lambda=0.5 -S sample.n_trajectories=3")
    shown = json.loads(run("dvc exp show --json"))
    rows = {}
    for commit in shown:
        for exp in [commit] + [e for run_ in commit.get("experiments") or [] for e in run_["revs"]]:
            data = exp.get("data") or {}
            name = exp.get("name") or data.get("name") or exp.get("rev")
            metrics = {path: (m.get("data") or {}) for path, m in (data.get("metrics") or {}).items()}
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            rows[name] = (metrics, params)
    assert "cheaper" in rows, rows.keys()
    base = next(v for k, v in rows.items() if k not in ("cheaper", "workspace"))
    for metrics, params in (base, rows["cheaper"]):
        assert metrics["results/metrics.json"]["metric"]["avg_score"] is not None
        assert metrics["results/train_metrics.json"]["iterations"] == params["train"]["iterations"]
    assert rows["cheaper"][1]["train"]["lambda"] == 0.5 and base[1]["train"]["lambda"] != 0.5
    assert rows["cheaper"][0]["results/train_metrics.json"] != base[0]["results/train_metrics.json"]

    # `dvc plots show`: a page that needs no network (vega inlined), with every chart beside it
    run("dvc plots show -q -o page")
    page = (tmp_path / "page/index.html").read_text()
    assert "<script src=" not in page and "vega-embed" in page and "vegaEmbed(" in page
    shown = {p.name.split("plots_")[-1] for p in (tmp_path / "page/static").iterdir()}
    assert shown == set(CHARTS), shown
