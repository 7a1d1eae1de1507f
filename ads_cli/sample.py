"""`ads sample`: the optimizer writes N trajectories per train task -> data/iter_K/trajectories.jsonl."""

from __future__ import annotations

import collections
import time

from . import lm as lm_mod
from .apis import APIContext, registry
from .errors import AdsError
from .index import Searcher
from .jsonl import read_jsonl, write_json, write_jsonl
from .optimizer import STOP, build_prompt, error_kind, parse_trajectory, seed_exemplars
from .paths import Paths
from .policy import answer_examples
from .progress import log


def validate_task(record: dict) -> str | None:
    for field, kind in (("id", str), ("name", str), ("metric", str), ("observed", list), ("heldout", list)):
        if not isinstance(record.get(field), kind):
            return f"field {field!r} must be a {kind.__name__}"
    for split in ("observed", "heldout"):
        for example in record[split]:
            if not isinstance(example, dict) or "input" not in example or "reference" not in example:
                return f"every {split} example needs 'input' and 'reference'"
    return None


def load_tasks(path) -> list[dict]:
    if not path.exists():
        raise AdsError(f"{path}: not found; run `ads prepare` first")
    tasks = read_jsonl(path, validate_task)
    if not tasks:
        raise AdsError(f"{path}: zero tasks; run `ads prepare` again with other filters")
    return tasks


def api_context(params: dict, paths: Paths, use_cache: bool | None = None) -> APIContext:
    return APIContext(params, lambda: Searcher(paths.index), lambda: lm_mod.load_role(params, "policy", use_cache))


def run(params: dict, paths: Paths, iteration: int = 1, use_cache: bool | None = None) -> dict:
    p = params["sample"]
    started = time.monotonic()
    tasks = load_tasks(paths.tasks_train)
    apis = registry(api_context(params, paths, use_cache))
    descriptions = [getattr(a, "description", f"{name}: <argument>") for name, a in apis.items()]
    policy = lm_mod.load_role(params, "policy", use_cache)
    optimizer = lm_mod.load_role(params, "optimizer", use_cache)

    # self-knowledge: the policy's own answers on the observed examples (the call cache keeps them)
    baseline = answer_examples(policy, tasks, "observed", params["lm"]["max_new_tokens"], "sample: policy baseline")
    exemplars = seed_exemplars()[: p["n_exemplars"]]
    prompts = [build_prompt(t, baseline[t["id"]], exemplars, descriptions) for t in tasks]

    records = []
    for j in range(p["n_trajectories"]):
        gens = optimizer.generate(prompts, max_new_tokens=p["max_new_tokens"], temperature=p["temperature"],
                                  seed=p["seed"] + j, stop=STOP, chat=False, desc=f"sample: trajectory {j + 1}/{p['n_trajectories']}")
        for task, g in zip(tasks, gens):
            calls, error = parse_trajectory(g.text, set(apis), p["max_calls"])
            record = {"task_id": task["id"], "trajectory_id": f"{task['id']}#{iteration}.{j}", "iteration": iteration,
                      "calls": calls, "raw": g.text, "cost": g.cost}
            if error:
                record["parse_error"] = error
            records.append(record)
    records.sort(key=lambda r: r["trajectory_id"])
    write_jsonl(paths.trajectories(iteration), records)

    parsed = [r for r in records if "parse_error" not in r]
    manifest = {
        "stage": "sample",
        "iteration": iteration,
        "params": p,
        "counts": {
            "tasks": len(tasks), "trajectories": len(records),
            "parse_rate": round(len(parsed) / len(records), 4),
            "empty_trajectories": sum(not r["calls"] for r in parsed),
            "api_mix": dict(collections.Counter(c["api"] for r in parsed for c in r["calls"])),
            "parse_errors": dict(collections.Counter(error_kind(r["parse_error"]) for r in records if "parse_error" in r)),
            "baseline_observed_score": round(sum(b["score"] for v in baseline.values() for b in v) / max(1, sum(len(v) for v in baseline.values())), 4),
        },
        "cost": {"optimizer_tokens": sum(r["cost"] for r in records)},
        "cache": {"policy": policy.cache.stats(), "optimizer": optimizer.cache.stats()},
        "timings": {"total_s": round(time.monotonic() - started, 3)},
    }
    write_json(paths.iteration(iteration) / "sample_manifest.json", manifest)
    log.info("sample: %s", manifest["counts"])
    return manifest
