"""`ads sample`: the optimizer writes N trajectories per train task -> data/iter_K/trajectories.jsonl.

Beside them, each API of `sample.single_calls` called once on the task's first observed question
(`source: single_call`): exploration that rejection sampling may keep, so that the optimizer can
learn what a 135M optimizer rarely writes on its own. The manifest's figures are the optimizer's."""

from __future__ import annotations

import collections
import time

from ..apis import registry
from ..engine.roles import load_role
from ..jsonl import write_json, write_jsonl
from ..method.calls import api_context
from ..method.optimizer import argument_quality, error_kind, load_optimizer, propose, single_call_records
from ..method.policy import answer_observed
from ..method.tasks import load_tasks
from ..paths import Paths
from ..progress import log


def run(params: dict, paths: Paths, iteration: int = 1) -> dict:
    p = params["sample"]
    started = time.monotonic()
    tasks = load_tasks(paths.tasks_train)
    apis = registry(api_context(params, paths))
    policy = load_role(params, "policy", paths)
    optimizer, learned = load_optimizer(params, paths, iteration)
    # self-knowledge: the policy's own answers on the observed examples (the call cache keeps them)
    observed_answers = answer_observed(policy, tasks, params, "sample: policy baseline")
    records = propose(optimizer, tasks, observed_answers, learned, apis, p, iteration=iteration,
                      n_trajectories=p["n_trajectories"], temperature=p["temperature"])
    singles = single_call_records(tasks, p["single_calls"], iteration)

    write_jsonl(paths.trajectories(iteration), sorted(records + singles, key=lambda r: r["trajectory_id"]))

    parsed = [r for r in records if "parse_error" not in r]
    manifest = {
        "stage": "sample",
        "iteration": iteration,
        "params": p,
        "optimizer": optimizer.name,
        "counts": {
            "tasks": len(tasks), "learned_exemplars": len(learned), "trajectories": len(records), "single_calls": len(singles),
            "parse_rate": round(len(parsed) / len(records), 4),
            "empty_trajectories": sum(not r["calls"] for r in parsed),
            "api_mix": dict(collections.Counter(c["api"] for r in parsed for c in r["calls"])),
            "argument_quality": argument_quality(records, tasks),
            "parse_errors": dict(collections.Counter(error_kind(r["parse_error"]) for r in records if "parse_error" in r)),
            "baseline_observed_score": round(sum(b["score"] for v in observed_answers.values() for b in v)
                                             / max(1, sum(len(v) for v in observed_answers.values())), 4),
        },
        "cost": {"optimizer_tokens": sum(r["cost"] for r in records)},
    }
    write_json(paths.sample_manifest(iteration), manifest)
    run_info = {"iteration": iteration, "cache": {"policy": policy.cache.stats(), "optimizer": optimizer.cache.stats()},
                "timings": {"total_s": round(time.monotonic() - started, 3)}}
    write_json(paths.run_log("sample"), run_info)
    log.info("sample: %s", manifest["counts"])
    return manifest | {"run": run_info}
