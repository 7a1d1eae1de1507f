import re

import pytest
from typer.testing import CliRunner

from ads_cli.method import evaluation
from ads_cli.stages import evaluate
from ads_cli.cli import app
from ads_cli.jsonl import read_json, read_jsonl, write_jsonl
from conftest import one_line_error

runner = CliRunner()


def _task(name, category, scores, costs=None):
    methods = {m: {"score": s, "likelihood": -s, "cost": (costs or {}).get(m, 0.0), "calls": []} for m, s in scores.items()}
    return {"task": name, "category": category, "metric": "exact", "instruction": "q", "score": scores["ads"],
            "baseline_score": scores["no_data"], "api_cost": 0.0, "trajectory": [], "parse_error": None, "methods": methods}


def test_summary_on_hand_made_results():
    base = dict.fromkeys(evaluation.METHODS + [evaluation.REFERENCE], 0.0)
    rows = [
        _task("a", "math", base | {"ads": 0.5, "no_data": 0.25}, {"ads": 100.0}),
        _task("b", "math", base | {"ads": 0.25, "no_data": 0.25}, {"ads": 300.0}),
        _task("c", "knowledge", base | {"ads": 0.0, "no_data": 0.5}),
        _task("d", "knowledge", base | {"ads": 0.75, "no_data": 0.5}),
    ]
    s = evaluation.summarize(rows, "metric", epsilon=0.05, seed=0)
    assert (s["win_rate"], s["tie_rate"], s["loss_rate"]) == (0.5, 0.25, 0.25)
    assert s["avg_score"] == pytest.approx(0.375) and s["avg_baseline_score"] == pytest.approx(0.375)
    assert s["mean_diff_vs_no_data"] == pytest.approx(0.0) and s["avg_cost"] == pytest.approx(100.0)
    lo, hi = s["ci95_vs_no_data"]
    assert -0.5 <= lo <= 0.0 <= hi <= 0.25
    assert s["by_category"]["math"] == {"tasks": 2} | {m: 0.0 for m in base} | {"ads": 0.375, "no_data": 0.25}
    assert s["vs"]["random"]["win_rate"] == 0.75  # random scored 0 everywhere; ads > 0 on three tasks
    # headroom: per task the best method in hindsight (a: ads 0.5, b: 0.25, c: no_data 0.5, d: ads 0.75) - no_data
    h = s["hindsight_best_vs_no_data"]
    assert h["mean_diff"] == pytest.approx(0.125) and (h["win_rate"], h["tie_rate"]) == (0.5, 0.5)
    for row in ("zero_shot", evaluation.REFERENCE):  # the bare prompt and the reference point are not choices
        rows[0]["methods"][row]["score"] = 9.0
        assert evaluation.summarize(rows, "metric", epsilon=0.05, seed=0)["hindsight_best_vs_no_data"] == h
        rows[0]["methods"][row]["score"] = 0.0
    likelihood = evaluation.summarize(rows, "likelihood", epsilon=0.05, seed=0)  # the other lens reads the other field
    assert likelihood["avg_score"] == pytest.approx(-0.375) and likelihood["vs"]["random"]["loss_rate"] == 0.75


def test_random_trajectory_is_seeded_and_sized():
    task = {"id": "t", "observed": [{"input": "q1"}, {"input": "q2"}]}
    a = evaluate.random_trajectory(task, 3, ["retrieve", "answer"], seed=0)
    assert a == evaluate.random_trajectory(task, 3, ["retrieve", "answer"], seed=0) and len(a) == 3
    assert {c["arg"] for c in a} <= {"q1", "q2"}
    assert len(evaluate.random_trajectory(task, 0, ["retrieve"], seed=0)) == 1


def test_evaluate_end_to_end_and_report_matches_json(trained, monkeypatch):
    monkeypatch.chdir(trained.root)
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 0, result.output
    ev = read_json(trained.root / "results/evaluation.json")
    tasks = read_jsonl(trained.tasks_test)
    assert ev["total_tasks"] == len(tasks) == ev["completed_tasks"] and ev["failed_tasks"] == 0
    assert set(ev["metrics"]) >= {"win_rate", "tie_rate", "loss_rate", "avg_score", "avg_cost"}
    for t in ev["task_results"]:
        assert set(t) >= {"task", "instruction", "score", "baseline_score", "api_cost"}
        assert set(t["methods"]) == set(evaluation.METHODS + [evaluation.REFERENCE])
        assert t["methods"]["ads"]["score"] == t["score"] and 0 <= t["score"] <= 1
        assert all(m["likelihood"] <= 0 for m in t["methods"].values())  # log2 p per byte
        assert t["methods"]["fewshot"]["likelihood"] == t["methods"]["no_data"]["likelihood"]  # the default layout is few-shot
        m, lenses = t["methods"], ("score", "likelihood")
        check = m["ads"]["check"]
        # tiny: 2 from the optimizer, then each API once on the first observed question (single_calls)
        singles = ["retrieve_only", "demonstrate_only", "answer_only"]
        assert len(check["candidates"]) == 2 + len(singles) and check["candidates"][0]["calls"] == m["ads_unchecked"]["calls"]
        assert [c["calls"] for c in check["candidates"][2:]] == [m[s]["calls"] for s in singles]
        assert m["ads"]["cost"] == sum(c["cost"] for c in check["candidates"]) >= m["ads_unchecked"]["cost"] + sum(m[s]["cost"] for s in singles)
        if check["chosen"] is None:
            assert [m["ads"][k] for k in lenses] == [m["no_data"][k] for k in lenses]
        elif check["chosen"] == 0:
            assert [m["ads"][k] for k in lenses] == [m["ads_unchecked"][k] for k in lenses]
        elif check["chosen"] >= 2:  # the data of a single call: the same context, so the same scores as that baseline
            assert [m["ads"][k] for k in lenses] == [m[singles[check["chosen"] - 2]][k] for k in lenses]
        assert m["ads"]["calls"] == check["candidates"][check["chosen"] or 0]["calls"]
    checks = [c["kept"] for t in ev["task_results"] for c in t["methods"]["ads"]["check"]["candidates"] if c["calls"]]
    assert checks, "no test task collected data: the check was not exercised"
    assert ev["metrics"] == ev["lenses"]["metric"] and set(ev["lenses"]) == {"metric", "likelihood"}
    report = (trained.root / "results/report.md").read_text()
    for lens, section in (("metric", "## Metric lens"), ("likelihood", "## Likelihood lens")):
        table = report.split(section, 1)[1].split("\n## ", 1)[0]
        for method, v in ev["lenses"][lens]["methods"].items():
            row = next(line for line in table.splitlines() if line.startswith(f"| {method}") or line.startswith(f"| **{method}"))
            assert f"{v['score']:.3f}" in row and f"{v['cost']:.0f}" in row
            if method != "ads":
                c = ev["lenses"][lens]["vs"][method]
                assert f"{c['mean_diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]" in row
    metrics = read_json(trained.root / "results/metrics.json")
    assert metrics["metric"]["avg_score"] == ev["metrics"]["avg_score"]
    assert metrics["likelihood"]["avg_score"] == ev["lenses"]["likelihood"]["avg_score"]
    plot = {(p["lens"], p["method"]): p["score"] for p in read_json(trained.root / "results/plot_scores.json")}
    assert plot == {(lens, m): v["score"] for lens, s in ev["lenses"].items() for m, v in s["methods"].items()}


def test_without_the_observed_check_ads_keeps_whatever_it_collected(trained, monkeypatch):
    monkeypatch.chdir(trained.root)
    result = runner.invoke(app, ["evaluate", "--set", "evaluate.check_observed=false"])
    assert result.exit_code == 0, result.output
    for t in read_json(trained.root / "results/evaluation.json")["task_results"]:
        m = t["methods"]
        assert "check" not in m["ads"] and m["ads"] == m["ads_unchecked"]
    runner.invoke(app, ["evaluate"])  # the session's project back to the default settings


def test_the_reference_point_is_scored_only_when_asked(trained, monkeypatch):
    monkeypatch.chdir(trained.root)
    result = runner.invoke(app, ["evaluate", "--set", "evaluate.reference=false"])
    assert result.exit_code == 0, result.output
    ev = read_json(trained.root / "results/evaluation.json")
    assert all(evaluation.REFERENCE not in t["methods"] for t in ev["task_results"])
    assert all(evaluation.REFERENCE not in s["methods"] and evaluation.REFERENCE not in s["vs"] for s in ev["lenses"].values())
    assert evaluation.REFERENCE not in (trained.root / "results/report.md").read_text()
    runner.invoke(app, ["evaluate"])  # tiny params score it: the session's project back to them
    assert evaluation.REFERENCE in read_json(trained.root / "results/evaluation.json")["lenses"]["likelihood"]["methods"]


def test_evaluate_user_task_file(trained, monkeypatch, tmp_path):
    monkeypatch.chdir(trained.root)
    mine = read_jsonl(trained.tasks_test)[:1]
    mine[0]["id"] = "my-own-task"
    write_jsonl(tmp_path / "mine.jsonl", mine)
    # --out keeps the pipeline's results as they are
    assert runner.invoke(app, ["evaluate"]).exit_code == 0  # the pipeline's own run, and its run log
    before = {p: p.read_bytes() for p in (trained.root / "results").rglob("*") if p.is_file()}
    run_log = (trained.root / "logs/evaluate.json").read_bytes()
    result = runner.invoke(app, ["evaluate", "--tasks", str(tmp_path / "mine.jsonl"), "--out", str(tmp_path / "mine_results")])
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in (trained.root / "results").rglob("*") if p.is_file()} == before
    out = tmp_path / "mine_results"
    assert (trained.root / "logs/evaluate.json").read_bytes() == run_log  # the pipeline's run log too
    assert read_json(out / "logs/evaluate.json")["timings"]["total_s"] >= 0
    assert [t["task"] for t in read_json(out / "evaluation.json")["task_results"]] == ["my-own-task"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["by_category.png", "scores.png"]
    assert "## Training" not in (out / "report.md").read_text()  # train's charts are not beside it
    assert "mine_results/report.md" in result.output.replace("\n", "")
    (tmp_path / "a_file").write_text("")
    one_line_error(runner.invoke(app, ["evaluate", "--out", str(tmp_path / "a_file")]), "a_file is a file; name a folder")
    result = runner.invoke(app, ["evaluate", "--tasks", str(tmp_path / "mine.jsonl")])
    assert result.exit_code == 0, result.output
    ev = read_json(trained.root / "results/evaluation.json")
    assert [t["task"] for t in ev["task_results"]] == ["my-own-task"]
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    result = runner.invoke(app, ["evaluate", "--tasks", str(tmp_path / "bad.jsonl")])
    assert result.exit_code == 2 and re.search(r"bad.jsonl:1: field 'name' must be a str", result.output)
    blank = dict(mine[0], heldout=mine[0]["heldout"][:1] + [{"input": "Anything?", "reference": ["", " "]}])
    write_jsonl(tmp_path / "blank.jsonl", [mine[0], blank])
    result = runner.invoke(app, ["evaluate", "--tasks", str(tmp_path / "blank.jsonl")])  # nothing to score it against
    assert result.exit_code == 2 and re.search(r"blank.jsonl:2: every heldout example needs a non-empty reference", result.output)


def test_evaluate_needs_a_trained_optimizer(project, user_files):
    docs, tasks = user_files
    assert runner.invoke(app, ["prepare", "--docs", str(docs), "--tasks", str(tasks)]).exit_code == 0
    assert runner.invoke(app, ["index"]).exit_code == 0
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 2 and "run `ads train` first" in result.output


class _ScoringRecorder:
    """Wraps the fake model; records every prompt the check scores."""

    def __init__(self):
        from ads_fake_backend import FakeModel
        from ads_cli.cache import CallCache

        self.model, self.contexts = FakeModel(CallCache(None)), []
        original = self.model.loglikelihood

        def loglikelihood(pairs, desc="score"):
            self.contexts += [context for context, _ in pairs]
            return original(pairs, desc=desc)

        self.model.loglikelihood = loglikelihood


def _check_task():
    observed = [{"input": f"Which river flows past town {k}?", "reference": ref} for k, ref in enumerate(["Danube", "Rhine", "Volga"])]
    heldout = [{"input": "Which river flows past Cairo?", "reference": "Nile"}]
    return {"id": "rivers", "metric": "exact", "observed": observed, "heldout": heldout}


def _never_scored(context):
    raise AssertionError(f"the held-out examples were scored again for {context!r}")


CHECK_PARAMS = {"train": {"reward": "likelihood", "fewshot": True}, "lm": {"max_new_tokens": 8}, "evaluate": {"seed": 0}}


@pytest.mark.parametrize("context, kept", [
    ("Danube Rhine Volga: rivers of Europe", True),  # every observed reference becomes likelier
    ("Danube: a river of Europe", False),  # one of three: a resample of the observed examples reaches 0
    ("Nile: a river of Africa", False),  # helps only the held-out example, which the check never reads
])
def test_ads_keeps_its_data_only_if_it_clears_the_noise_on_the_observed_examples(context, kept):
    recorder = _ScoringRecorder()
    ads = {"score": 0.0, "likelihood": -1.5, "cost": 70.0, "calls": ["c"], "trajectory_id": "rivers#3.0", "context": context}
    no_data = {"score": 0.0, "likelihood": -2.0}
    out = evaluate.chosen_on_observed(recorder.model, _check_task(), [ads], no_data, CHECK_PARAMS, _never_scored)
    assert out["check"]["kept"] is kept and len(out["check"]["candidates"][0]["observed_gains"]) == 3
    assert out["likelihood"] == (-1.5 if kept else -2.0) and out["cost"] == 70.0 and out["calls"] == ["c"]  # the calls were paid
    assert not any("Cairo" in c for c in recorder.contexts)  # the held-out question is never in a scored prompt
    # leave one out: each observed example is scored with the other two as demonstrations, never itself
    for k, ref in enumerate(["Danube", "Rhine", "Volga"]):
        own = [c for c in recorder.contexts if c.endswith(f"town {k}?\nassistant: ")]
        assert own and all(f"assistant: {ref}" not in c for c in own)


def test_of_several_candidates_ads_keeps_the_one_that_gains_most_on_the_observed_examples():
    task, no_data = _check_task(), {"score": 0.0, "likelihood": -2.0}
    scored_again = []

    def candidate(j, context, cost):
        return {"trajectory_id": f"rivers#3.{j}", "calls": [f"call {j}"], "cost": cost, "errors": [], "context": context}

    candidates = [candidate(0, "Danube: a river of Europe", 10.0),  # gains on one observed example of three: noise
                  candidate(1, "Danube Rhine Volga: rivers of Europe", 20.0),  # gains on all three
                  candidate(2, "", 0.0),  # collected nothing
                  candidate(3, "Danube Rhine Volga Danube Rhine Volga: rivers, rivers of Europe", 40.0)]
    candidates[0] |= {"score": 0.0, "likelihood": -1.9}

    def score_held_out(context):
        scored_again.append(context)
        return {"score": 1.0, "likelihood": -1.0}

    out = evaluate.chosen_on_observed(_ScoringRecorder().model, task, candidates, no_data, CHECK_PARAMS, score_held_out)
    check = out["check"]
    assert [c["kept"] for c in check["candidates"]] == [False, True, False, True] and check["candidates"][2]["observed_gains"] == []
    gains = [sum(c["observed_gains"]) for c in check["candidates"]]
    assert check["chosen"] == max((1, 3), key=lambda j: gains[j]) and out["calls"] == [f"call {check['chosen']}"]
    assert scored_again == [candidates[check["chosen"]]["context"]] and out["likelihood"] == -1.0  # only the chosen one
    assert out["cost"] == 70.0  # every candidate was executed
    none_clear = evaluate.chosen_on_observed(_ScoringRecorder().model, task, candidates[:1] + candidates[2:3], no_data,
                                             CHECK_PARAMS, _never_scored)
    assert none_clear["check"]["chosen"] is None and none_clear["likelihood"] == -2.0 and none_clear["calls"] == ["call 0"]
    assert none_clear["cost"] == 10.0
