import shutil

import pytest
from typer.testing import CliRunner

from ads_cli import params as params_mod
from ads_cli.cli import app
from ads_cli.method import reward as train
from ads_cli.jsonl import read_json, read_jsonl

runner = CliRunner()


def test_reward():
    assert train.reward(0.25, 500, 0.1, 1000) == pytest.approx(0.2)
    assert train.reward(0.0, 0, 0.1, 1000) == 0.0


def _row(tid, reward, cost, parse_error=False):
    r = {"trajectory_id": tid, "task_id": "t", "calls": [{"api": "retrieve", "arg": tid}], "reward": reward, "cost": cost,
         "accepted": True}
    if parse_error:
        r["parse_error"] = "not a call at line 1"
    return r


def test_select_best_by_reward_then_cost_then_id():
    rows = [_row("t#1.0", 0.2, 300), _row("t#1.1", 0.2, 100), _row("t#1.2", 0.5, 900, parse_error=True)]
    assert train.select_best(rows, 0.0)["trajectory_id"] == "t#1.1"  # parse errors never win
    assert train.select_best([_row("t#1.0", 0.2, 100), _row("t#1.1", 0.2, 100)], 0.0)["trajectory_id"] == "t#1.0"


def test_collecting_nothing_wins_when_everything_hurts():
    best = train.select_best([_row("t#1.0", -0.1, 50), _row("t#1.1", -0.3, 10)], 0.0)
    assert best["calls"] == [] and best["reward"] == 0.0
    assert train.select_best([_row("t#1.0", -0.1, 50)], 0.1) is None  # nothing clears the threshold


def test_preference_pairs_best_versus_worst():
    pair = train.preference_pairs([_row("t#1.0", 0.1, 1), _row("t#1.1", 0.4, 1), _row("t#1.2", -0.2, 1)], "PROMPT")
    assert pair["chosen"] == "retrieve: t#1.1\nend" and pair["rejected"] == "retrieve: t#1.2\nend" and pair["prompt"] == "PROMPT"
    assert train.preference_pairs([_row("t#1.0", 0.1, 1), _row("t#1.1", 0.1, 1)], "P") is None


def test_two_iterations_write_everything(trained):
    for k in (1, 2):
        for name in ("trajectories", "executions", "rewards", "best", "preferences", "optimizer_state"):
            assert (trained.iteration(k) / f"{name}.jsonl").exists(), (k, name)
    rewards = read_jsonl(trained.iteration(1) / "rewards.jsonl")
    params = params_mod.load(trained.root / "params.yaml")
    for r in rewards:
        assert r["lens"] == params["train"]["reward"] == "likelihood"
        assert r["reward"] == pytest.approx(r["gain"] - 0.1 * r["cost"] / params["train"]["cost_scale"])
        assert r["gain"] == pytest.approx(r["score"] - r["baseline"]) and r["gain"] == r["likelihood_gain"]
        assert r["scores"] == r["likelihood_scores"] and all(s <= 0 for s in r["scores"])  # log2 p per byte
        assert len(r["metric_scores"]) == params["prepare"]["heldout"] and all(0 <= s <= 1 for s in r["metric_scores"])
        assert isinstance(r["accepted"], bool) and (r["accepted"] <= (r["gain"] > 0))
        # the deployed check, measured beside the reward: rows with data carry it, and it decides what the policy gets
        assert ("checked_gain" in r) == bool(r["n_items"])
        if r["n_items"]:
            assert len(r["observed_gains"]) == params["prepare"]["observed"]
            assert r["checked_gain"] == (r["gain"] if r["check_kept"] else 0.0)
            assert r["check_kept"] <= (sum(r["observed_gains"]) > 0)
    # min_reward=-1: every task keeps its best, and iteration 2 samples from those exemplars
    state = read_jsonl(trained.iteration(1) / "optimizer_state.jsonl")
    assert len(state) == len(read_jsonl(trained.tasks_train)) and not any(e["seed"] for e in state)
    assert read_json(trained.iteration(2) / "sample_manifest.json")["counts"]["learned_exemplars"] == len(state)
    learned = {e["task_id"] for e in state}
    assert all(set(t["exemplars"]) & learned for t in read_jsonl(trained.trajectories(2)) if t["source"] == "optimizer")
    metrics = read_json(trained.root / "results/train_metrics.json")
    assert metrics["iterations"] == 2 and metrics["last_vs_previous"]["n"] == len(state)
    # the optimizer's figures leave out the single calls beside its trajectories, summarised apart
    rows = read_jsonl(trained.iteration(2) / "rewards.jsonl")
    last = [r for r in rows if r["source"] == "optimizer"]
    single = [r for r in rows if r["source"] == "single_call"]
    assert len(last) == len(state) * params["sample"]["n_trajectories"]
    assert len(single) == len(state) * len(params["sample"]["single_calls"])
    assert metrics["mean_gain"] == pytest.approx(sum(r["gain"] for r in last) / len(last), abs=1e-6)
    assert metrics["single_calls"] == {api: {"rows": len(state), "accepted": sum(r["accepted"] for r in single if r["calls"][0]["api"] == api),
                                             "mean_gain": pytest.approx(sum(r["gain"] for r in single if r["calls"][0]["api"] == api) / len(state), abs=1e-6)}
                                       for api in params["sample"]["single_calls"]}
    best = read_jsonl(trained.iteration(2) / "best.jsonl")
    sources = {r["trajectory_id"]: r["source"] for k in (1, 2) for r in read_jsonl(trained.iteration(k) / "rewards.jsonl")}
    assert all(b["source"] == sources.get(b["trajectory_id"]) for b in best)  # None: the empty trajectory
    assert metrics["kept_single_calls"] == sum(b["source"] == "single_call" for b in best)
    checked = metrics["checked"]
    assert checked["mean_gain"] == pytest.approx(sum(r.get("checked_gain", 0.0) for r in last) / len(last), abs=1e-6)
    assert checked["with_data"] == sum(bool(r["n_items"]) for r in last) and checked["kept"] <= checked["with_data"]
    assert checked["gain_ci95"][0] <= checked["mean_gain"] <= checked["gain_ci95"][1]
    lo, hi = metrics["last_vs_previous"]["ci95"]
    assert lo <= metrics["last_vs_previous"]["mean_diff"] <= hi
    plot = read_json(trained.root / "results/train_plot.json")
    assert [p["iteration"] for p in plot] == [1, 2]


def test_partly_finished_iteration_resumes_to_the_same_rewards(trained, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(trained.root, copy)
    monkeypatch.chdir(copy)
    it1 = copy / "data/iter_1"
    expected = (it1 / "rewards.jsonl").read_bytes()
    # as if killed during execute: no executions, rewards or state yet; half the journal written
    for name in ("executions.jsonl", "rewards.jsonl", "optimizer_state.jsonl", "train_manifest.json"):
        (it1 / name).unlink()
    journal = (it1 / "execute.journal.jsonl").read_bytes().splitlines(keepends=True)
    (it1 / "execute.journal.jsonl").write_bytes(b"".join(journal[: len(journal) // 2]) + b'{"api": "ans')
    result = runner.invoke(app, ["train", "--iter", "1", "--set", "train.min_reward=-1"])
    assert result.exit_code == 0, result.output
    assert (it1 / "rewards.jsonl").read_bytes() == expected
    assert read_json(copy / "logs/train.json")["iterations"][0]["execute"]["resumed_calls"] == len(journal) // 2 - 1  # less the header


def test_the_observed_check_is_measured_beside_the_reward_and_can_be_turned_off(trained, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(trained.root, copy)
    monkeypatch.chdir(copy)
    with_check = read_jsonl(copy / "data/iter_1/rewards.jsonl")
    assert any("check_kept" in r for r in with_check)
    result = runner.invoke(app, ["train", "--iter", "1", "--set", "train.min_reward=-1", "--set", "train.observed_check=false"])
    assert result.exit_code == 0, result.output
    without = read_jsonl(copy / "data/iter_1/rewards.jsonl")
    measured = ("observed_gains", "check_kept", "checked_gain")
    assert without == [{k: v for k, v in r.items() if k not in measured} for r in with_check]  # the reward does not change
    assert read_json(copy / "data/iter_1/train_manifest.json")["metrics"]["checked"] is None


@pytest.mark.model
def test_lora_policy_update_and_sft_optimizer(trained, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(trained.root, copy, ignore=shutil.ignore_patterns("iter_*", "results"))
    monkeypatch.chdir(copy)
    result = runner.invoke(app, ["train", "--iter", "2", "--set", "train.update=lora", "--set", "train.optimizer_update=sft",
                                 "--set", "train.min_reward=-1", "--set", "lm.policy_backend=local",
                                 "--set", "lm.optimizer_backend=local"])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(copy / "data/iter_1/rewards.jsonl")
    with_items = [r for r in rows if r["n_items"]]
    measured = read_json(copy / "logs/train.json")["iterations"][0]["update"]
    assert with_items and set(measured["lora_seconds"]) == {r["trajectory_id"] for r in with_items}
    assert (copy / "data/iter_1/optimizer_lora/adapter_config.json").exists()
    assert "optimizer_lora" in read_json(copy / "data/iter_2/sample_manifest.json")["optimizer"]
    assert measured["timings"]["optimizer_sft_s"] > 0


@pytest.mark.model  # imports peft and builds a model: 6 s, with the other LoRA test
def test_lora_adapters_start_from_the_seed():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ads_cli.engine.lora import fresh_peft_model

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=32)
    train = {"lora_r": 4, "seed": 7}
    starts = []
    for _ in range(2):
        model = fresh_peft_model(LlamaForCausalLM(config), train)
        torch.manual_seed(123)  # whatever ran before, the adapter's start depends on the seed alone
        starts.append({k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k})
    assert starts[0] and all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def test_train_needs_prepared_tasks(project):
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and "run `ads prepare` first" in result.output


def test_python_api_runs_the_loop(trained, tmp_path):
    from ads_cli import Pipeline

    copy = tmp_path / "copy"
    shutil.copytree(trained.root, copy, ignore=shutil.ignore_patterns("iter_*", "optimizer", "results"))
    pipeline = Pipeline.from_params(copy / "params.yaml", ["train.min_reward=-1"], root=copy)
    summary = pipeline.train(iterations=1)
    assert summary["iterations"] == 1
    for name in ("trajectories", "rewards", "optimizer_state"):
        rel = f"data/iter_1/{name}.jsonl"
        assert (copy / rel).read_bytes() == (trained.root / rel).read_bytes(), rel


def test_an_adapter_left_by_an_earlier_sft_run_is_not_used(trained, tmp_path):
    from ads_cli.params import load
    from ads_cli.paths import Paths
    from ads_cli.stages import train

    root = tmp_path / "p"
    shutil.copytree(trained.root, root)
    paths = Paths(root)
    leftover = paths.optimizer_lora(1)
    leftover.mkdir()
    (leftover / "adapter_config.json").write_text("{}")  # would break the optimizer if it were loaded
    params = load(root / "params.yaml", [f"lm.call_cache={trained.root / 'calls.sqlite'}", "train.min_reward=-1"])
    train.update(params, paths, 1)
    assert not leftover.exists()
    train.export_optimizer(paths, 1)
    assert not paths.optimizer_adapter.exists()


def test_a_kept_single_call_becomes_the_tasks_exemplar(trained, tmp_path, monkeypatch):
    """Rejection sampling may keep a single call (`sample.single_calls`): it is then the task's
    exemplar, with its source, and the next iteration's optimizer sees it under the task's block."""
    from ads_cli.stages import train as train_stage

    copy = tmp_path / "copy"
    shutil.copytree(trained.root, copy)
    monkeypatch.chdir(copy)

    def single_calls_win(rows, min_reward):  # as if every task's retrieve call had cleared the noise and won
        return next(r for r in rows if r["source"] == "single_call" and r["calls"][0]["api"] == "retrieve")

    monkeypatch.setattr(train_stage, "select_best", single_calls_win)
    result = runner.invoke(app, ["train", "--iter", "2", "--set", "sample.single_calls=[retrieve, demonstrate]"])
    assert result.exit_code == 0, result.output
    tasks = read_jsonl(copy / "data/prepared/tasks_train.jsonl")
    for k in (1, 2):
        best = read_jsonl(copy / f"data/iter_{k}/best.jsonl")
        assert [b["source"] for b in best] == ["single_call"] * len(tasks)
        assert read_json(copy / f"data/iter_{k}/train_manifest.json")["metrics"]["kept_single_calls"] == len(tasks)
    state = {e["task_id"]: e for e in read_jsonl(copy / "data/iter_1/optimizer_state.jsonl")}
    prompts = {t["task_id"]: t["prompt"] for t in read_jsonl(copy / "data/iter_2/trajectories.jsonl") if t["source"] == "optimizer"}
    for task in tasks:
        exemplar = state[task["id"]]
        assert exemplar["source"] == "single_call" and exemplar["calls"] == [{"api": "retrieve", "arg": task["observed"][0]["input"][:200]}]
        own_block = prompts[task["id"]].rsplit("Task:", 2)[1]  # the task's own exemplar, last, under its whole block
        assert f"retrieve: {exemplar['calls'][0]['arg']}\nend" in own_block
