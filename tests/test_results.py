"""What people look at: the charts (deterministic PNGs), the report's image links, `ads inspect`."""

import re
import shutil
import subprocess
import sys

import orjson
import pytest
from typer.testing import CliRunner

from ads_cli.charts import CHARTS
from ads_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """A copy of the trained project, evaluated once."""
    root = tmp_path_factory.mktemp("evaluated") / "p"
    shutil.copytree(trained.root, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        params = (root / "params.yaml").read_text().replace(str(trained.root), str(root))
        (root / "params.yaml").write_text(params)
        result = runner.invoke(app, ["evaluate"])
        assert result.exit_code == 0, result.output
    return root


def test_train_and_evaluate_write_every_chart(evaluated):
    written = sorted(p.name for p in (evaluated / "results/plots").iterdir())
    assert written == sorted(CHARTS)
    for name in written:
        data = (evaluated / "results/plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
        assert b"matplotlib" not in data.lower()  # no software version in the metadata


def test_charts_are_the_same_bytes_from_the_same_data(evaluated, tmp_path):
    """Drawn again in a fresh process, with a user matplotlibrc that would change the style."""
    (tmp_path / "matplotlibrc").write_text("font.size: 20\nlines.linewidth: 5\nsavefig.dpi: 300\n")
    script = (
        "import sys; from pathlib import Path; from ads_cli.jsonl import read_json, read_jsonl;"
        "from ads_cli.charts import evaluation_charts, train_charts; r = Path(sys.argv[1]); out = Path(sys.argv[2]);"
        "evaluation_charts(read_json(r / 'results/evaluation.json'), out);"
        "ks = [1, 2]; train_charts([read_json(r / f'data/iter_{k}/train_manifest.json')['metrics'] for k in ks],"
        " {k: read_jsonl(r / f'data/iter_{k}/rewards.jsonl') for k in ks},"
        " {k: {b['trajectory_id'] for b in read_jsonl(r / f'data/iter_{k}/best.jsonl')} for k in ks}, out)"
    )
    subprocess.run([sys.executable, "-c", script, str(evaluated), str(tmp_path / "again")], check=True, cwd=tmp_path,
                   env={"MPLCONFIGDIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    for name in CHARTS:
        assert (tmp_path / "again" / name).read_bytes() == (evaluated / "results/plots" / name).read_bytes(), name


def test_the_report_embeds_each_chart_with_a_relative_link_and_a_caption(evaluated):
    report = (evaluated / "results/report.md").read_text()
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", report)
    assert sorted(target for _, target in links) == sorted(f"plots/{name}" for name in CHARTS)
    for title, target in links:
        assert (evaluated / "results" / target).is_file()  # relative to report.md, as GitHub resolves it
        assert f"*{title}.* {CHARTS[target.split('/')[-1]][1]}" in report  # the caption says what to read
    # the scores chart sits after the lens tables, the per-category one after its table
    assert report.index("plots/scores.png") > report.index("## Likelihood lens")
    assert report.index("plots/by_category.png") > report.index("## By category")


def test_inspect_shows_a_task_and_its_json_is_the_same_view(evaluated, monkeypatch):
    monkeypatch.chdir(evaluated)
    rewards = [orjson.loads(line) for line in (evaluated / "data/iter_2/rewards.jsonl").read_bytes().splitlines()]
    task_id = next(r["task_id"] for r in rewards if r["calls"])
    same = ["--set", "train.min_reward=-1"]  # the settings the fixture trained with
    result = runner.invoke(app, ["inspect", task_id, "--iter", "2", "--json", *same])
    assert result.exit_code == 0, result.output
    view = orjson.loads(result.stdout)
    mine = [r for r in rewards if r["task_id"] == task_id]
    assert view["iteration"] == 2 and view["task"]["id"] == task_id
    assert [t["trajectory_id"] for t in view["trajectories"]] == [r["trajectory_id"] for r in mine]
    for shown, row in zip(view["trajectories"], mine):
        assert shown["reward"] == row["reward"] and shown["lenses"]["likelihood"]["gain"] == row["likelihood_gain"]
        assert shown["source"] == row["source"]
        assert [c["arg"] for c in shown["calls"]] == [c["arg"] for c in row["calls"]]
        if row["n_items"]:
            assert shown["observed_check"] == {"gains": row["observed_gains"], "kept": row["check_kept"]}
    assert len(view["answers"]) == 2 and {"without", "with_kept_data"} <= set(view["answers"][0])
    assert "Task:" in view["prompt"]
    assert "warning" not in view
    other = runner.invoke(app, ["inspect", task_id, "--json", "--no-answers", *same, "--set", "train.lambda=0.9"])
    assert "other settings (train.lambda)" in orjson.loads(other.stdout)["warning"]  # the iteration was not written with these
    text = runner.invoke(app, ["inspect", task_id, "--iter", "2"])
    assert text.exit_code == 0 and "optimizer prompt" in text.output and mine[0]["trajectory_id"].split("#")[1] in text.output
    assert ("observed check (deployed ADS)" in text.output) == any(r["n_items"] for r in mine)
    assert "single_call" in {r["source"] for r in mine}  # the tiny params offer single calls
    assert text.output.count("(single call)") == sum(r["source"] == "single_call" for r in mine)


@pytest.mark.parametrize("args, message", [
    (["inspect", "{typo}"], r"error: task '{typo}' is not in data/prepared/tasks_train.jsonl; closest: {task}"),
    (["inspect", "{task}", "--iter", "7"], r"error: --iter 7: no finished iteration 7 in data/; there are: 1, 2"),
])
def test_inspect_errors_are_one_line(evaluated, monkeypatch, args, message):
    monkeypatch.chdir(evaluated)
    task = orjson.loads((evaluated / "data/prepared/tasks_train.jsonl").read_bytes().splitlines()[0])["id"]
    typo = task[:-1] + "x" + task[-1]
    args, message = [a.format(task=task, typo=typo) for a in args], message.format(task=task, typo=typo)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output), result.output


def test_a_task_keeps_earlier_data_end_to_end_and_inspect_shows_it(trained, tmp_path, monkeypatch):
    """Iteration 2 keeps iteration 1's data for a task when nothing new does as well: its best
    row says so, and `ads inspect` scores the policy with those earlier items."""
    from ads_cli.jsonl import read_jsonl, write_jsonl
    from ads_cli.params import load
    from ads_cli.paths import Paths
    from ads_cli.stages import train

    root = tmp_path / "p"
    shutil.copytree(trained.root, root)
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace(str(trained.root), str(root)))
    paths = Paths(root)
    with_items = next(e for e in read_jsonl(paths.executions(1)) if e["items"])
    task_id = with_items["task_id"]
    calls = next(t["calls"] for t in read_jsonl(paths.trajectories(1)) if t["trajectory_id"] == with_items["trajectory_id"])
    exemplars = read_jsonl(paths.exemplars(1))
    for e in exemplars:  # as if iteration 1 had kept this trajectory with a reward nothing beats
        if e["task_id"] == task_id:
            e.update(calls=calls, reward=5.0, iteration=1, trajectory_id=with_items["trajectory_id"], source="optimizer")
    write_jsonl(paths.exemplars(1), exemplars)
    params = load(root / "params.yaml", ["train.min_reward=-1"])
    train.update(params, paths, 2)
    best = next(b for b in read_jsonl(paths.best(2)) if b["task_id"] == task_id)
    assert best == {"task_id": task_id, "trajectory_id": with_items["trajectory_id"], "calls": calls, "reward": 5.0, "iteration": 1,
                    "source": "optimizer"}
    kept = next(e for e in read_jsonl(paths.exemplars(2)) if e["task_id"] == task_id)
    assert kept["reward"] == 5.0 and kept["iteration"] == 1
    result = runner.invoke(app, ["inspect", task_id, "--iter", "2", "--json", "--set", "train.min_reward=-1"])
    assert result.exit_code == 0, result.output
    view = orjson.loads(result.stdout)
    assert view["kept"]["iteration"] == 1 and not any(t["kept"] for t in view["trajectories"])
    from ads_cli.stages.inspect import kept_items

    assert kept_items(paths, view["kept"]) == with_items["items"]  # the earlier iteration's items
