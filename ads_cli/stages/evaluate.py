"""`ads evaluate`: ADS against baselines on test tasks it never trained on, in two lenses, at a known cost.

Per test task, on the same held-out examples in one run, each method is scored in the metric
lens (the policy answers; the task's metric) and the likelihood lens (log2 p of the references
per byte), with the policy's prompt laid out as in training (`train.fewshot`):
- `ads`: the final optimizer writes `evaluate.candidates` trajectories from the observed examples
  (the first greedy, the others sampled as in training), and each API of `evaluate.single_calls`
  called once on the first observed question joins them; all are executed, and the policy answers
  with the data of the one that clears the noise on the task's observed examples by the most
  (`evaluate.check_observed`, `chosen_on_observed`), else with none; `ads_unchecked` is the
  greedy trajectory's data kept unconditionally, at its own cost (ADS before that check);
- `no_data`: the policy's default prompt with no collected data (with `train.fewshot` this
  is few-shot); `zero_shot`: the bare question; `fewshot`: the observed examples as
  demonstrations, at cost 0 (what every practitioner tries first);
- `random` (random APIs, the same number of calls as `ads`, arguments drawn from the task's
  observed questions); `random_docs` (as many random corpus passages as one retrieval returns,
  under the same token budget: the control for "any context at all");
  `retrieve_only`, `demonstrate_only`, `answer_only` (that API alone, the task's first observed
  question as the argument); `iter0` (the seed-exemplar optimizer, before any training);
- with `evaluate.reference`, a reference point, labelled as such and never a baseline to beat:
  `reference_retrieval`, retrieval with each held-out question itself.
Statistics are paired by task (method/evaluation.py).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from ..apis import registry
from ..engine.lora import with_adapter
from ..engine.roles import load_role
from ..errors import AdsError
from ..jsonl import read_json, read_jsonl, write_json, write_text
from ..method.calls import api_context, assemble, fingerprint, run_calls
from ..method.optimizer import propose, single_call
from ..charts import evaluation_charts
from ..method.evaluation import REFERENCE, TRAIN_CHARTS, report, summarize
from ..method.policy import answer_observed, build_context, observed_baseline, observed_check, require_likelihood, score_lenses
from ..method.stats import mean
from ..method.tasks import last_message, load_tasks
from ..params import SINGLE_CALL_APIS, tie_epsilon
from ..paths import Paths
from ..progress import log, phase_seconds, reset_phases, track

# methods scored from a trajectory's collected data
TRAJECTORY_METHODS = ["ads", "random", "retrieve_only", "demonstrate_only", "answer_only", "iter0"]


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
    reset_phases()
    e = params["evaluate"]
    tasks = load_tasks(tasks_path, written_by=None) if tasks_path else load_tasks(paths.tasks_test)
    paths.require(paths.index_manifest, "ads index")
    final_optimizer, final_exemplars, final = trained_optimizer(params, paths)
    ctx = api_context(params, paths)
    apis = registry(ctx)
    builtin = list(SINGLE_CALL_APIS)
    policy = load_role(params, "policy", paths)
    max_tokens, fewshot, budget = params["lm"]["max_new_tokens"], params["train"]["fewshot"], params["train"]["context_tokens"]
    if e["likelihood"]:
        require_likelihood(policy, "evaluate.likelihood=true")
    elif e["check_observed"] and params["train"]["reward"] == "likelihood":
        require_likelihood(policy, "evaluate.check_observed=true with train.reward=likelihood")
    observed_answers = answer_observed(policy, tasks, params, "evaluate: observed baseline")

    # the trajectories of every method, then all their calls at once (deduplicated, journaled)
    greedy_one = dict(n_trajectories=1, temperature=0.0)
    ads = {r["task_id"]: r for r in propose(final_optimizer, tasks, observed_answers, final_exemplars, apis, params["sample"],
                                            iteration=final + 1, label="evaluate: ads", **greedy_one)}
    # more candidates for the observed check to choose from: sampled as in training (seed + j)
    sampled: dict[str, list[dict]] = {t["id"]: [] for t in tasks}
    if e["check_observed"] and e["candidates"] > 1:
        for r in propose(final_optimizer, tasks, observed_answers, final_exemplars, apis, params["sample"], iteration=final + 1,
                         label="evaluate: ads", n_trajectories=e["candidates"] - 1,
                         temperature=params["sample"]["temperature"], first=1):
            sampled[r["task_id"]].append(r)
    iter0_optimizer = load_role(params, "optimizer", paths)  # seed exemplars, no training
    iter0 = {r["task_id"]: r for r in propose(iter0_optimizer, tasks, observed_answers, [], apis, params["sample"],
                                              iteration=0, label="evaluate: iter0", **greedy_one)}
    trajectories: dict[tuple[str, str], dict] = {}
    for task in tasks:
        tid = task["id"]
        plans = {
            "ads": ads[tid],
            "iter0": iter0[tid],
            "random": {"calls": random_trajectory(task, len(ads[tid]["calls"]), builtin, e["seed"])},
            **{f"{api}_only": {"calls": single_call(task, api)} for api in builtin},
        }
        plans |= {f"ads.{j + 1}": plan for j, plan in enumerate(sampled[tid])}
        for method, plan in plans.items():
            trajectories[(tid, method)] = {"task_id": tid, "trajectory_id": f"{tid}#eval.{method}", "calls": plan["calls"],
                                           **({"parse_error": plan["parse_error"]} if "parse_error" in plan else {})}
    call_results, resumed = run_calls(apis, list(trajectories.values()), paths.evaluate_journal,
                                      params["execute"]["journal_every"], fingerprint(params), "evaluate: calls",
                                      max_cost=params["execute"]["max_cost"])

    docs = read_jsonl(paths.require(paths.docs, "ads prepare"))
    task_results, failed = [], []
    with track("evaluate: score", total=len(tasks)) as progress:
        for task in tasks:
            tid = task["id"]
            try:
                def scored(context: str | list[str], method: str, demos: bool = fewshot) -> dict:
                    lenses = score_lenses(policy, task, context, max_tokens, f"evaluate: {method}", demos, e["likelihood"])
                    return {"score": mean(lenses["metric"])} | ({"likelihood": mean(lenses["likelihood"])} if e["likelihood"] else {})

                no_data = scored("", "no data")
                methods = {"no_data": no_data | {"cost": 0.0, "calls": []},
                           "zero_shot": scored("", "zero-shot", demos=False) | {"cost": 0.0, "calls": []},
                           "fewshot": scored("", "few-shot", demos=True) | {"cost": 0.0, "calls": []}}
                contexts = {}
                for method in TRAJECTORY_METHODS:
                    ex = assemble(trajectories[(tid, method)], call_results)
                    contexts[method] = build_context(task, ex["items"], budget, policy.count_tokens)
                    methods[method] = (scored(contexts[method], method) if contexts[method] else dict(no_data)) | {
                        "cost": ex["cost"], "calls": trajectories[(tid, method)]["calls"], "errors": ex["errors"]}
                methods["ads_unchecked"] = dict(methods["ads"])
                if e["check_observed"]:
                    candidates = [dict(methods["ads"], trajectory_id=trajectories[(tid, "ads")]["trajectory_id"], context=contexts["ads"])]
                    for j in range(1, len(sampled[tid]) + 1):
                        trajectory = trajectories[(tid, f"ads.{j}")]
                        ex = assemble(trajectory, call_results)
                        candidates.append({"trajectory_id": trajectory["trajectory_id"], "calls": trajectory["calls"], "cost": ex["cost"],
                                           "errors": ex["errors"], "context": build_context(task, ex["items"], budget, policy.count_tokens)})
                    # each API in `single_calls` once on the first observed question: `<api>_only`, already scored
                    candidates += [dict(methods[f"{api}_only"], trajectory_id=trajectories[(tid, f"{api}_only")]["trajectory_id"],
                                        context=contexts[f"{api}_only"]) for api in e["single_calls"]]
                    methods["ads"] = chosen_on_observed(policy, task, candidates, no_data, params,
                                                        lambda c: scored(c, "ads (chosen)"))
                drawn = random_docs(docs, params["index"]["top_k"], f"{e['seed']}:{tid}")
                methods["random_docs"] = scored(build_context(task, drawn, budget, policy.count_tokens), "random docs") | {
                    "cost": 0.0, "calls": [], "docs": [d["doc_id"] for d in drawn]}
                if e["reference"]:
                    methods[REFERENCE] = reference_retrieval(task, apis["retrieve"], budget, policy.count_tokens, scored)
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

    lenses = {lens: summarize(task_results, lens, tie_epsilon(e, lens), e["seed"])
              for lens in ("metric", "likelihood") if lens == "metric" or e["likelihood"]}
    summary = lenses["metric"]  # the top level keeps the metric lens, as before the likelihood lens existed
    layout = ("collected data first, then the task's observed examples as demonstrations, then the question" if fewshot
              else "collected data first, then the question")
    evaluation = {"total_tasks": len(tasks), "completed_tasks": len(task_results), "failed_tasks": len(failed),
                  "failures": failed, "final_iteration": final, "metrics": summary, "lenses": lenses, "layout": layout,
                  "task_results": task_results, "cost_unit": "tokens read + generated, plus apis.retrieval_price per retrieval"}
    write_json(paths.evaluation, evaluation)
    write_json(paths.metrics, {lens: {k: v for k, v in s.items() if not isinstance(v, dict)}
                               | {f"vs_{m}": {k: s["vs"][m][k] for k in ("win_rate", "mean_diff")} for m in s["vs"]}
                               for lens, s in lenses.items()})
    write_json(paths.plot_scores, [{"method": m, "lens": lens, "score": s["methods"][m]["score"], "cost": s["methods"][m]["cost"]}
                                   for lens, s in lenses.items() for m in s["methods"]])
    # the training charts are `ads train`'s (which evaluate needs): linked whether or not this
    # folder still holds them, so that the report depends only on what evaluate reads; a report
    # written elsewhere (`--out`) has no training charts beside it
    train_charts = TRAIN_CHARTS if paths.results_dir is None else []
    write_text(paths.report, report(evaluation, evaluation_charts(evaluation, paths.plots) + train_charts))
    # what differs from run to run (timing, cache, resumed calls): beside the results, not in them
    total = time.monotonic() - started
    run_info = {"resumed_calls": resumed, "cache": {"policy": policy.cache.stats(), "apis": ctx.cache_stats()},
                "timings": {"total_s": round(total, 3)}, "phases": phase_seconds(total)}
    write_json(paths.run_log("evaluate"), run_info)
    return evaluation | {"run": run_info}


def chosen_on_observed(policy, task: dict, candidates: list[dict], no_data: dict, params: dict, score_held_out) -> dict:
    """ADS at deployment: which collected data the policy keeps, decided on the task's observed
    examples only.

    `candidates` are the trajectories the final optimizer wrote for the task (`evaluate.candidates`:
    the greedy one first, then sampled ones) and each API of `evaluate.single_calls` called once
    on the first observed question, each executed, with its `context`, `calls`, `cost` and
    `errors`, and its held-out `score` (and `likelihood`) where they are known already. Each
    candidate's gain on the observed examples (leave one out, in the `train.reward` lens) is
    tested with training's acceptance rule (`clears_noise`); of those that clear the noise, the
    one with the highest mean gain is kept (the earlier on a tie) and, unless scored already,
    scored with `score_held_out(context)`; if none clears it, the policy
    answers with no data. Every candidate's calls were made, so all their costs count. The
    held-out examples are read only to score the chosen candidate."""
    without = observed_baseline(policy, task, params, "evaluate: ads check") if any(c["context"] for c in candidates) else []
    checked = []
    for c in candidates:
        check = (observed_check(policy, task, c["context"], params, params["evaluate"]["seed"], "evaluate: ads check", without)
                 if c["context"] else {"observed_gains": [], "kept": False})
        checked.append({"trajectory_id": c["trajectory_id"], "calls": c["calls"], "cost": c["cost"]} | check)
    chosen = max((j for j, c in enumerate(checked) if c["kept"]), key=lambda j: (mean(checked[j]["observed_gains"]), -j), default=None)
    if chosen is None:
        scores = no_data
    elif "score" in candidates[chosen]:  # the greedy trajectory and the single calls were scored as methods already
        scores = candidates[chosen]
    else:
        scores = score_held_out(candidates[chosen]["context"])
    return {k: v for k, v in scores.items() if k in ("score", "likelihood")} | {
        "cost": sum(c["cost"] for c in candidates), "calls": candidates[0 if chosen is None else chosen]["calls"],
        "errors": [err for c in candidates for err in c.get("errors", [])],
        "check": {"lens": params["train"]["reward"], "kept": chosen is not None, "chosen": chosen, "candidates": checked}}


def reference_retrieval(task: dict, retrieve, budget: int, count_tokens, scored) -> dict:
    """The reference point (`evaluate.reference`): each held-out question answered with the
    passages retrieved for it. It reads held-out inputs, so it is never a baseline to beat, and
    each question has a context of its own: no shared prefix, so it takes several times as long
    as a method with one context (measured on 3 tasks: 14 to 28 s a task against 2 to 7 s for
    `no_data`)."""
    results = [retrieve(last_message(x["input"])[:300]) for x in task["heldout"]]
    contexts = [build_context(dict(task, observed=[x]), r.items, budget, count_tokens) for x, r in zip(task["heldout"], results)]
    return scored(contexts, "reference") | {"cost": mean([r.cost for r in results]), "calls": [], "reference": True}


def random_docs(docs: list[dict], k: int, seed: str) -> list[dict]:
    """`k` corpus passages drawn at random (seeded per task): the control for "any context at all"."""
    rng = random.Random(seed)
    return [{"kind": "passage", "doc_id": d["id"], "title": d["title"], "text": d["text"]} for d in rng.sample(docs, min(k, len(docs)))]
