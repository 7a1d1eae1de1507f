"""`ads train`: reward each trajectory, keep the best, improve the optimizer; `--iter N` loops.

One iteration K: `ads sample` -> `ads execute` -> update. The update:
1. the policy answers each task's held-out examples with a trajectory's collected items in its
   prompt (`icl`) or after a LoRA fine-tune on them (`lora`);
2. reward = score gain over the no-data policy - lambda * cost / cost_scale (method/reward.py);
3. rejection sampling: per task, the best accepted trajectory (of the optimizer's, and of the
   single calls `ads sample` puts beside them; or "none", whose reward is 0 by definition) is
   kept if its reward >= min_reward, unless an earlier iteration's kept data did at least as
   well (`keeps_earlier`: then that stays); it joins the optimizer's exemplars for iteration
   K+1 (`exemplars`), or the optimizer is LoRA-tuned on them (`sft`);
4. best-versus-worst pairs are exported for DPO, and per-iteration metrics are appended.

Everything expensive goes through the call cache and the execute journal, so a partly finished
iteration resumes where it stopped.
"""

from __future__ import annotations

import collections
import shutil
import time

from ..charts import optimizer_rows, train_charts
from ..engine.lora import train_optimizer_sft
from ..engine.roles import load_role
from ..errors import AdsError
from ..jsonl import fresh_tmp_dir, read_json, read_jsonl, replace_dir, write_json, write_jsonl
from ..method.calls import validate_execution
from ..method.optimizer import exemplar_from, format_calls, load_exemplars
from ..method.policy import (answer_observed, build_context, observed_baseline, observed_check, require_likelihood,
                             score_lenses, score_update)
from ..method.reward import clears_noise, gains, keeps_earlier, preference_pairs, reward, select_best
from ..method.stats import bootstrap_ci, correlation, mean, paired_summary
from ..method.tasks import load_tasks
from ..params import tie_epsilon
from ..paths import Paths
from ..progress import log, phase_seconds, reset_phases, track
from . import execute, sample


def reward_row(execution: dict, trajectory: dict, lenses: dict, no_data: dict, t: dict) -> dict:
    """One rewards.jsonl row: the gain in both lenses, the reward in the lens `train.reward`
    names, and whether the gain cleared the noise."""
    scored = [lens for lens in ("metric", "likelihood") if lens in lenses]
    per_lens = {lens: gains(lenses[lens], no_data[lens]) for lens in scored}
    lens = t["reward"]
    gain = mean(per_lens[lens])
    row = {"trajectory_id": execution["trajectory_id"], "task_id": execution["task_id"], "calls": trajectory.get("calls", []),
           "lens": lens, "score": mean(lenses[lens]), "baseline": mean(no_data[lens]), "gain": gain, "scores": lenses[lens]}
    row |= {f"{x}_gain": mean(per_lens[x]) for x in scored} | {f"{x}_scores": lenses[x] for x in scored}
    row |= {"source": trajectory.get("source", "optimizer"), "accepted": clears_noise(per_lens[lens], t["seed"]), "cost": execution["cost"],
            "reward": reward(gain, execution["cost"], t["lambda"], t["cost_scale"]), "n_items": len(execution["items"])}
    if "parse_error" in trajectory:
        row["parse_error"] = trajectory["parse_error"]
    return row


def deployed_check(policy, task: dict, items: list[dict], params: dict, observed_without: dict, gain: float) -> dict:
    """A measurement, not part of the reward: what the deployed ADS would do with this data
    (`ads evaluate`'s observed check, `observed_check`). `check_kept`: its gain on the task's
    observed examples clears the noise; `checked_gain`: the held-out gain the policy then gets
    (`gain` if kept, else 0, as the data is not used)."""
    t = params["train"]
    if task["id"] not in observed_without:
        observed_without[task["id"]] = observed_baseline(policy, task, params, "train: observed check")
    context = build_context(task, items, t["context_tokens"], policy.count_tokens)
    check = observed_check(policy, task, context, params, t["seed"], "train: observed check", observed_without[task["id"]])
    return {"observed_gains": check["observed_gains"], "check_kept": check["kept"], "checked_gain": gain if check["kept"] else 0.0}


def checked_summary(rows: list[dict], seed: int) -> dict | None:
    """The iteration's gains as the deployed ADS would get them (rows without data gain 0 either
    way), over tasks with a bootstrap CI, and how well the observed gain predicts the held-out one."""
    if not any("checked_gain" in r for r in rows):
        return None
    by_task = collections.defaultdict(list)
    for r in rows:
        by_task[r["task_id"]].append(r.get("checked_gain", 0.0))
    checked = [r for r in rows if "checked_gain" in r]
    pairs = [(mean(r["observed_gains"]), r["gain"]) for r in checked]
    return {"mean_gain": round(mean([r.get("checked_gain", 0.0) for r in rows]), 6),
            "gain_ci95": bootstrap_ci([mean(v) for _, v in sorted(by_task.items())], seed),
            "with_data": len(checked), "kept": sum(r["check_kept"] for r in checked),
            "observed_vs_heldout_corr": correlation(pairs)}


def single_call_summary(rows: list[dict]) -> dict | None:
    """The single calls offered beside the optimizer's trajectories (`sample.single_calls`), per
    API: how many, how many cleared the noise, their mean gain in the reward's lens."""
    if not rows:
        return None
    by_api = collections.defaultdict(list)
    for r in rows:
        by_api[r["calls"][0]["api"]].append(r)
    return {api: {"rows": len(v), "accepted": sum(r["accepted"] for r in v), "mean_gain": round(mean([r["gain"] for r in v]), 6)}
            for api, v in sorted(by_api.items())}


def update(params: dict, paths: Paths, iteration: int) -> tuple[dict, dict]:
    """The update of iteration K, after sample and execute: score every trajectory's data on the
    policy, reward it, keep each task's best as an exemplar (or LoRA-tune the optimizer on them),
    and write the iteration's rewards, best, preferences, exemplars and manifest.

    Returns (the iteration's metrics, what this run measured: timings and cache hits)."""
    t = params["train"]
    started = time.monotonic()
    tasks = {task["id"]: task for task in load_tasks(paths.tasks_train)}
    trajectories = {r["trajectory_id"]: r for r in read_jsonl(paths.trajectories(iteration))}
    exec_path = paths.require(paths.executions(iteration), f"ads execute --iter {iteration}")
    executions = read_jsonl(exec_path, validate_execution)
    policy = load_role(params, "policy", paths)
    likelihood = t["reward"] == "likelihood"  # `run` checked before any work that the policy can score it
    max_tokens = params["lm"]["max_new_tokens"]
    observed_answers = answer_observed(policy, list(tasks.values()), params, "train: observed baseline")
    no_data = {tid: score_lenses(policy, task, "", max_tokens, "train: no-data baseline", t["fewshot"], likelihood)
               for tid, task in tasks.items()}
    observed_without: dict[str, list[float]] = {}  # the observed check's baseline, per task, when first needed

    rows, lora_seconds = [], {}
    with track(f"train: score iteration {iteration}", total=len(executions)) as progress:
        for ex in executions:
            task = tasks.get(ex["task_id"])
            if task is None:
                raise AdsError(f"{exec_path}: task {ex['task_id']!r} is not in {paths.tasks_train}; rerun `ads sample`")
            base = no_data[task["id"]]
            lenses, seconds = score_update(policy, task, ex["items"], params, "train: policy + data") if ex["items"] else (base, None)
            traj = trajectories.get(ex["trajectory_id"], {})
            rows.append(reward_row(ex, traj, lenses, base, t))
            if ex["items"] and t["update"] == "icl" and t["observed_check"]:
                rows[-1] |= deployed_check(policy, task, ex["items"], params, observed_without, rows[-1]["gain"])
            if seconds is not None:
                lora_seconds[ex["trajectory_id"]] = round(seconds, 2)
            progress.step()
    write_jsonl(paths.rewards(iteration), rows)

    by_task = collections.defaultdict(list)
    for r in rows:
        by_task[r["task_id"]].append(r)
    exemplars = {e["task_id"]: e for e in load_exemplars(paths, iteration)}
    # the prompt each task's trajectories were sampled from (the single calls beside them have none)
    prompts = {tr["task_id"]: tr["prompt"] for tr in trajectories.values() if tr.get("prompt")}
    best_rows, pairs = [], []
    for task_id in sorted(by_task):
        task = tasks[task_id]
        best = select_best(by_task[task_id], t["min_reward"])
        if best is not None:
            earlier = exemplars.get(task_id)
            if keeps_earlier(earlier, best):
                best = {"trajectory_id": earlier.get("trajectory_id"), "calls": earlier["calls"], "reward": earlier["reward"],
                        "iteration": earlier["iteration"], "source": earlier.get("source")}
            else:
                exemplars[task_id] = exemplar_from(task, observed_answers[task_id], best["calls"], best["reward"], iteration,
                                                   best["trajectory_id"], best.get("source"))
                best = best | {"iteration": iteration}
            # source: optimizer or single_call; None for the empty trajectory no row wrote
            best_rows.append({"task_id": task_id, "trajectory_id": best["trajectory_id"], "calls": best["calls"], "reward": best["reward"],
                              "iteration": best["iteration"], "source": best.get("source")})
        pair = preference_pairs(by_task[task_id], prompts.get(task_id, ""))
        if pair:
            pairs.append(pair)
    write_jsonl(paths.best(iteration), best_rows)
    write_jsonl(paths.preferences(iteration), pairs)
    write_jsonl(paths.exemplars(iteration), [exemplars[k] for k in sorted(exemplars)])
    sft_seconds = None
    if t["optimizer_update"] == "sft":
        pairs = [(prompts[b["task_id"]], format_calls(b["calls"]) + "\nend") for b in best_rows if prompts.get(b["task_id"])]
        if pairs:
            optimizer = load_role(params, "optimizer", paths)
            sft_seconds = train_optimizer_sft(t, optimizer, pairs, paths.optimizer_lora(iteration))
    else:  # an adapter an earlier sft run left here is not this run's optimizer
        shutil.rmtree(paths.optimizer_lora(iteration), ignore_errors=True)

    # the optimizer's own figures: the single calls beside its trajectories are summarised apart
    own = optimizer_rows(rows)
    own_by_task = collections.defaultdict(list)
    for r in own:
        own_by_task[r["task_id"]].append(r)
    task_rewards = {k: mean([r["reward"] for r in v]) for k, v in sorted(own_by_task.items())}
    task_likelihood_gains = {k: round(mean([r["likelihood_gain"] for r in v]), 6) for k, v in sorted(own_by_task.items())} if likelihood else None
    metrics = {
        "iteration": iteration,
        "lens": t["reward"],
        "mean_reward": round(mean([r["reward"] for r in own]), 6),
        "mean_gain": round(mean([r["gain"] for r in own]), 6),
        "mean_metric_gain": round(mean([r["metric_gain"] for r in own]), 6),
        "mean_likelihood_gain": round(mean([r["likelihood_gain"] for r in own]), 6) if likelihood else None,
        # over tasks: is the iteration's data helping the policy, beyond the noise of 16 tasks?
        "likelihood_gain_ci95": bootstrap_ci(list(task_likelihood_gains.values()), t["seed"]) if likelihood else None,
        "accepted": sum(r["accepted"] for r in own),
        "mean_cost": round(mean([r["cost"] for r in own]), 3),
        "parse_rate": round(mean([0.0 if "parse_error" in r else 1.0 for r in own]), 4),
        "api_mix": dict(collections.Counter(c["api"] for r in own for c in r["calls"])),
        # what the deployed ADS, with its observed check, would have gained: a measurement, not the reward
        "checked": checked_summary(own, t["seed"]),
        "kept": len(best_rows), "kept_empty": sum(not b["calls"] for b in best_rows),
        "kept_single_calls": sum(b["source"] == "single_call" for b in best_rows),
        "single_calls": single_call_summary([r for r in rows if r["source"] == "single_call"]),
        "task_rewards": task_rewards,
        "task_likelihood_gains": task_likelihood_gains,
    }
    write_json(paths.train_manifest(iteration), {"stage": "train", "params": t, "metrics": metrics})
    run_info = {"cache": policy.cache.stats(), "lora_seconds": lora_seconds,
                "timings": {"update_s": round(time.monotonic() - started, 3), "optimizer_sft_s": sft_seconds,
                            "policy_lora_s": round(sum(lora_seconds.values()), 2)}}
    return metrics, run_info


def write_metrics(params: dict, paths: Paths, upto: int) -> dict:
    """results/train_metrics.json (dvc metrics) and results/train_plot.json (dvc plots)."""
    per_iter = []
    for k in range(1, upto + 1):
        manifest = paths.train_manifest(k)
        if manifest.exists():
            per_iter.append(read_json(manifest)["metrics"])
    summary: dict = {"iterations": len(per_iter)}
    if per_iter:
        last = per_iter[-1]
        summary |= {k: last.get(k) for k in ("lens", "mean_reward", "mean_gain", "mean_metric_gain", "mean_likelihood_gain",
                                             "likelihood_gain_ci95", "accepted", "mean_cost", "parse_rate", "checked",
                                             "kept_single_calls", "single_calls")}
    if len(per_iter) >= 2:
        a, b = per_iter[-1]["task_rewards"], per_iter[-2]["task_rewards"]
        common = sorted(set(a) & set(b))
        t = params["train"]
        cmp = paired_summary([a[k] for k in common], [b[k] for k in common], tie_epsilon(t, t["reward"]), t["seed"])
        summary["last_vs_previous"] = {"from": per_iter[-2]["iteration"], "to": per_iter[-1]["iteration"]} | cmp
    plot = [{k: m[k] for k in ("iteration", "mean_reward", "mean_gain", "mean_metric_gain", "mean_likelihood_gain", "mean_cost",
                               "parse_rate")}
            | {f"api_{api}": n for api, n in sorted(m["api_mix"].items())} for m in per_iter]
    write_json(paths.train_metrics, summary)
    write_json(paths.train_plot, plot)
    iterations = [m["iteration"] for m in per_iter]
    rewards = {k: read_jsonl(paths.rewards(k)) for k in iterations}
    kept = {k: {b["trajectory_id"] for b in read_jsonl(paths.best(k))} for k in iterations}
    train_charts(per_iter, rewards, kept, paths.plots)
    return summary


def export_optimizer(paths: Paths, iteration: int) -> None:
    """Copy the optimizer after `iteration` (its exemplars, and its LoRA adapter under sft) to
    data/optimizer/, the one artifact `ads evaluate` reads."""
    tmp = fresh_tmp_dir(paths.optimizer)
    shutil.copy2(paths.exemplars(iteration), tmp / paths.optimizer_exemplars.name)
    if paths.optimizer_lora(iteration).exists():
        shutil.copytree(paths.optimizer_lora(iteration), tmp / paths.optimizer_adapter.name)
    write_json(tmp / paths.optimizer_manifest.name, {"iteration": iteration})
    replace_dir(tmp, paths.optimizer)


def run(params: dict, paths: Paths, iterations: int | None = None) -> dict:
    n = iterations or params["train"]["iterations"]
    if n < 1:
        raise AdsError(f"--iter must be >= 1, got {n}")
    started = time.monotonic()
    reset_phases()
    if params["train"]["reward"] == "likelihood":  # before any work: a served policy may not give prompt logprobs
        require_likelihood(load_role(params, "policy", paths), "train.reward=likelihood")
    measured = []
    for k in range(1, n + 1):
        log.info("train: iteration %d/%d", k, n)
        sampled = sample.run(params, paths, k)
        executed = execute.run(params, paths, k)
        _, updated = update(params, paths, k)
        measured.append({"iteration": k, "sample": sampled["run"], "execute": executed["run"], "update": updated})
    export_optimizer(paths, n)
    summary = write_metrics(params, paths, n)
    total = time.monotonic() - started
    run_info = {"iterations": measured, "timings": {"total_s": round(total, 3)}, "phases": phase_seconds(total)}
    write_json(paths.run_log("train"), run_info)
    return summary | {"run": run_info}
