"""`ads execute`: run every call of every trajectory -> data/iter_K/executions.jsonl.

Identical calls across trajectories run once; every finished call is journaled, so a killed run
resumes where it stopped and writes the same bytes (method/calls.py).
"""

from __future__ import annotations

import collections
import time

from ..apis import registry
from ..jsonl import read_jsonl, write_json, write_jsonl
from ..method.calls import api_context, assemble, fingerprint, run_calls, validate_trajectory
from ..paths import Paths
from ..progress import log


def run(params: dict, paths: Paths, iteration: int = 1) -> dict:
    started = time.monotonic()
    traj_path = paths.require(paths.trajectories(iteration), f"ads sample --iter {iteration}")
    paths.require(paths.index_manifest, "ads index")
    trajectories = read_jsonl(traj_path, validate_trajectory)
    ctx = api_context(params, paths)
    apis = registry(ctx)
    results, resumed = run_calls(apis, trajectories, paths.execute_journal(iteration),
                                 params["execute"]["journal_every"], fingerprint(params), max_cost=params["execute"]["max_cost"])
    executions = [assemble(t, results) for t in trajectories]
    write_jsonl(paths.executions(iteration), executions)

    manifest = {
        "stage": "execute",
        "iteration": iteration,
        "params": {"apis": params["apis"], "execute": params["execute"]},
        "counts": {
            "trajectories": len(trajectories),
            "calls": sum(len(t["calls"]) for t in trajectories),
            "unique_calls": len(results),
            "failed_calls": sum(not r["ok"] for r in results.values()),
            "items": dict(collections.Counter(i["kind"] for e in executions for i in e["items"])),
        },
        "cost": {"total": sum(e["cost"] for e in executions), "unique_calls": sum(r["cost"] for r in results.values())},
    }
    write_json(paths.execute_manifest(iteration), manifest)
    run_info = {"iteration": iteration, "resumed_calls": resumed, "cache": ctx.cache_stats(),
                "timings": {"total_s": round(time.monotonic() - started, 3)}}
    write_json(paths.run_log("execute"), run_info)
    log.info("execute: %s", manifest["counts"])
    return manifest | {"run": run_info}
