"""`ads evaluate`: ADS against baselines on test tasks it never trained on, at a known cost.

Per test task, on the same held-out examples in one run:
- `ads`: the final optimizer writes one trajectory (greedy) from the observed examples; it is
  executed and the policy answers with the collected data;
- baselines: `no_data`; `random` (random APIs, the same number of calls as `ads`, arguments
  drawn from the task's observed questions); `retrieve_only`, `demonstrate_only`,
  `answer_only` (that API alone, the task's first observed question as the argument);
  `iter0` (the seed-exemplar optimizer, before any training);
- a reference point, labelled as such and never a baseline to beat: `reference_retrieval`,
  retrieval with each held-out question itself.
Statistics are paired by task: win/tie/loss (tie within `evaluate.tie_epsilon`), mean score
difference with a bootstrap 95% CI, and a per-category breakdown.
"""

from __future__ import annotations

import collections
import random
import time
from pathlib import Path

from ..apis import registry
from ..engine.lora import with_adapter
from ..engine.roles import load_role
from ..errors import AdsError
from ..jsonl import read_json, read_jsonl, write_json, write_text
from ..method.calls import api_context, assemble, fingerprint, run_calls
from ..method.optimizer import propose
from ..method.policy import answer_examples, build_context, score_with_context
from ..method.stats import mean, paired_summary
from ..method.tasks import last_message, load_tasks
from ..paths import Paths
from ..progress import log, track

METHODS = ["ads", "no_data", "random", "retrieve_only", "demonstrate_only", "answer_only", "iter0"]
REFERENCE = "reference_retrieval"


def trained_optimizer(params: dict, paths: Paths):
    """The optimizer `ads train` exported to data/optimizer/: (model, exemplars, iteration)."""
    exemplars = read_jsonl(paths.require(paths.optimizer_exemplars, "ads train"))
    model = with_adapter(load_role(params, "optimizer", paths), paths.optimizer_adapter)
    return model, exemplars, read_json(paths.optimizer_manifest)["iteration"]


def random_trajectory(task: dict, n_calls: int, api_names: list[str], seed: int) -> list[dict]:
    rng = random.Random(f"{seed}:{task['id']}")
    questions = [last_message(e["input"])[:200] for e in task["observed"]]
    return [{"api": rng.choice(api_names), "arg": rng.choice(questions)} for _ in range(max(1, n_calls))]


def run(params: dict, paths: Paths, tasks_path: Path | None = None) -> dict:
    started = time.monotonic()
    e = params["evaluate"]
    tasks = load_tasks(tasks_path, written_by=None) if tasks_path else load_tasks(paths.tasks_test)
    paths.require(paths.index_manifest, "ads index")
    final_optimizer, final_exemplars, final = trained_optimizer(params, paths)
    ctx = api_context(params, paths)
    apis = registry(ctx)
    builtin = ["retrieve", "demonstrate", "answer"]
    policy = load_role(params, "policy", paths)
    max_tokens = params["lm"]["max_new_tokens"]
    observed_answers = answer_examples(policy, tasks, "observed", max_tokens, "evaluate: observed baseline")
    no_data = answer_examples(policy, tasks, "heldout", max_tokens, "evaluate: no-data baseline")

    # the trajectories of every method, then all their calls at once (deduplicated, journaled)
    greedy_one = dict(n_trajectories=1, temperature=0.0)
    ads = {r["task_id"]: r for r in propose(final_optimizer, tasks, observed_answers, final_exemplars, apis, params["sample"],
                                            iteration=final + 1, label="evaluate: ads", **greedy_one)}
    iter0_optimizer = load_role(params, "optimizer", paths)  # seed exemplars, no training
    iter0 = {r["task_id"]: r for r in propose(iter0_optimizer, tasks, observed_answers, [], apis, params["sample"],
                                              iteration=0, label="evaluate: iter0", **greedy_one)}
    trajectories: dict[tuple[str, str], dict] = {}
    for task in tasks:
        tid = task["id"]
        first_q = last_message(task["observed"][0]["input"])[:200]
        plans = {
            "ads": ads[tid],
            "iter0": iter0[tid],
            "random": {"calls": random_trajectory(task, len(ads[tid]["calls"]), builtin, e["seed"])},
            **{f"{api}_only": {"calls": [{"api": api, "arg": first_q}]} for api in builtin},
        }
        for method, plan in plans.items():
            trajectories[(tid, method)] = {"task_id": tid, "trajectory_id": f"{tid}#eval.{method}", "calls": plan["calls"],
                                           **({"parse_error": plan["parse_error"]} if "parse_error" in plan else {})}
    call_results, resumed = run_calls(apis, list(trajectories.values()), paths.evaluate_journal,
                                      params["execute"]["journal_every"], fingerprint(params), "evaluate: calls",
                                      max_cost=params["execute"]["max_cost"])

    task_results, failed = [], []
    with track("evaluate: score", total=len(tasks)) as progress:
        for task in tasks:
            tid = task["id"]
            try:
                methods = {"no_data": {"score": mean([x["score"] for x in no_data[tid]]), "cost": 0.0, "calls": []}}
                for method in METHODS:
                    if method == "no_data":
                        continue
                    ex = assemble(trajectories[(tid, method)], call_results)
                    context = build_context(task, ex["items"], params["train"]["context_tokens"], policy.count_tokens)
                    scored = score_with_context(policy, task, context, max_tokens, desc=f"evaluate: {method}") if context else no_data[tid]
                    methods[method] = {"score": mean([x["score"] for x in scored]), "cost": ex["cost"],
                                       "calls": trajectories[(tid, method)]["calls"], "errors": ex["errors"]}
                methods[REFERENCE] = reference_retrieval(policy, task, apis["retrieve"], params)
            except AdsError:
                raise
            except Exception as exc:  # one broken task is reported, the others still count
                log.warning("evaluate: task %s failed: %s", tid, exc)
                failed.append({"task": tid, "error": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                progress.step()
            task_results.append({
                "task": tid, "category": task["category"], "metric": task["metric"],
                "instruction": last_message(task["observed"][0]["input"])[:200],
                "score": methods["ads"]["score"], "baseline_score": methods["no_data"]["score"],
                "api_cost": methods["ads"]["cost"], "trajectory": methods["ads"]["calls"],
                "parse_error": ads[tid].get("parse_error"), "methods": methods,
            })

    summary = summarize(task_results, e["tie_epsilon"], e["seed"])
    evaluation = {"total_tasks": len(tasks), "completed_tasks": len(task_results), "failed_tasks": len(failed),
                  "failures": failed, "final_iteration": final, "metrics": summary, "task_results": task_results,
                  "cost_unit": "tokens read + generated, plus apis.retrieval_price per retrieval"}
    write_json(paths.evaluation, evaluation)
    write_json(paths.metrics, {k: v for k, v in summary.items() if not isinstance(v, dict)}
               | {f"vs_{m}": {k: summary["vs"][m][k] for k in ("win_rate", "mean_diff")} for m in summary["vs"]})
    write_json(paths.plot_scores, [{"method": m, "score": summary["methods"][m]["score"], "cost": summary["methods"][m]["cost"]}
                                                   for m in summary["methods"]])
    write_text(paths.report, report(evaluation))
    # what differs from run to run (timing, cache, resumed calls): beside the results, not in them
    run_info = {"resumed_calls": resumed, "cache": {"policy": policy.cache.stats(), "apis": ctx.cache_stats()},
                "timings": {"total_s": round(time.monotonic() - started, 3)}}
    write_json(paths.run_log("evaluate"), run_info)
    return evaluation | {"run": run_info}


def reference_retrieval(policy, task: dict, retrieve, params: dict) -> dict:
    """Reference point: each held-out question retrieves its own passages (uses held-out inputs)."""
    results = [retrieve(last_message(e["input"])[:300]) for e in task["heldout"]]
    contexts = [build_context(dict(task, observed=[e]), r.items, params["train"]["context_tokens"], policy.count_tokens)
                for e, r in zip(task["heldout"], results)]
    scored = score_with_context(policy, task, contexts, params["lm"]["max_new_tokens"], desc="evaluate: reference")
    return {"score": mean([x["score"] for x in scored]), "cost": mean([r.cost for r in results]), "calls": [], "reference": True}


def summarize(task_results: list[dict], epsilon: float, seed: int) -> dict:
    methods = METHODS + [REFERENCE]
    per_method = {m: {"score": round(mean([t["methods"][m]["score"] for t in task_results]), 6),
                      "cost": round(mean([t["methods"][m]["cost"] for t in task_results]), 3)} for m in methods}
    ads_scores = [t["methods"]["ads"]["score"] for t in task_results]
    vs = {m: paired_summary(ads_scores, [t["methods"][m]["score"] for t in task_results], epsilon, seed) for m in methods if m != "ads"}
    rows_by_category = collections.defaultdict(list)
    for t in task_results:
        rows_by_category[t["category"]].append(t)
    by_category = {cat: {"tasks": len(rows)} | {m: round(mean([t["methods"][m]["score"] for t in rows]), 4) for m in methods}
                   for cat, rows in sorted(rows_by_category.items())}
    return {
        "win_rate": vs["no_data"]["win_rate"], "tie_rate": vs["no_data"]["tie_rate"], "loss_rate": vs["no_data"]["loss_rate"],
        "avg_score": per_method["ads"]["score"], "avg_baseline_score": per_method["no_data"]["score"],
        "avg_cost": per_method["ads"]["cost"], "mean_diff_vs_no_data": vs["no_data"]["mean_diff"],
        "ci95_vs_no_data": vs["no_data"]["ci95"], "parse_failures": sum(bool(t["parse_error"]) for t in task_results),
        "methods": per_method, "vs": vs, "by_category": by_category,
    }


def report(evaluation: dict) -> str:
    s = evaluation["metrics"]
    lines = [
        "# ADS evaluation", "",
        f"{evaluation['completed_tasks']} of {evaluation['total_tasks']} test tasks completed ({evaluation['failed_tasks']} failed);"
        f" optimizer after iteration {evaluation['final_iteration']}. Scores are means over held-out examples, then over tasks;"
        f" cost is the data-collection cost per task ({evaluation['cost_unit']}).", "",
        "| method | mean score | mean cost | ADS win / tie / loss | ADS − method (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for m, v in s["methods"].items():
        label = f"{m} (reference, uses held-out questions)" if m == REFERENCE else m
        if m == "ads":
            lines.append(f"| **{label}** | {v['score']:.3f} | {v['cost']:.0f} | | |")
        else:
            c = s["vs"][m]
            lines.append(f"| {label} | {v['score']:.3f} | {v['cost']:.0f} | {c['win_rate']:.0%} / {c['tie_rate']:.0%} / {c['loss_rate']:.0%}"
                         f" | {c['mean_diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] |")
    lines += ["", "## By category", "", "| category | tasks | " + " | ".join(s["methods"]) + " |", "|---|---|" + "---|" * len(s["methods"])]
    for cat, row in s["by_category"].items():
        lines.append(f"| {cat} | {row['tasks']} | " + " | ".join(f"{row[m]:.3f}" for m in s["methods"]) + " |")
    lines += ["", "## ADS trajectories", "", "| task | metric | calls | no data | ADS |", "|---|---|---|---|---|"]
    for t in evaluation["task_results"]:
        calls = "; ".join(f"{c['api']}: {c['arg'][:40]}" for c in t["trajectory"]) or ("parse error" if t["parse_error"] else "none")
        lines.append(f"| {t['task']} | {t['metric']} | {calls.replace('|', '/')} | {t['baseline_score']:.3f} | {t['score']:.3f} |")
    return "\n".join(lines) + "\n"
