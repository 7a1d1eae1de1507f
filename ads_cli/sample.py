"""`ads sample`: the optimizer writes N trajectories per train task -> data/iter_K/trajectories.jsonl."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from . import lm as lm_mod
from .lm import LineGrammar
from .apis import APIContext, registry
from .errors import AdsError
from .index import Searcher
from .jsonl import read_jsonl, write_json, write_jsonl
from .optimizer import STOP, build_prompt, error_kind, parse_trajectory, select_exemplars
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


def api_context(params: dict, paths: Paths) -> APIContext:
    return APIContext(params, lambda: Searcher(paths.index), lambda: lm_mod.load_role(params, "policy", paths))


def load_optimizer(params: dict, paths: Paths, iteration: int):
    """The optimizer going into `iteration`: its model (LoRA-tuned under `sft`) and learned exemplars."""
    from .train import load_state  # the optimizer's state is what train wrote for the last iteration

    optimizer = lm_mod.load_role(params, "optimizer", paths)
    state = load_state(paths, iteration)
    if iteration > 1:
        from .lora import adapter_dir

        optimizer = with_adapter(optimizer, adapter_dir(paths, iteration - 1))
    return optimizer, state


def with_adapter(optimizer, adapter: Path):
    """The optimizer with its LoRA adapter where `sft` saved one (none when nothing was kept)."""
    if not adapter.exists():
        return optimizer
    if not isinstance(optimizer, lm_mod.LM):
        raise AdsError(f"{adapter}: a LoRA adapter trained with optimizer_update=sft needs lm.optimizer_backend=local")
    from .lora import load_tuned_optimizer

    return load_tuned_optimizer(optimizer, adapter)


def propose(optimizer, tasks: list[dict], baseline: dict, state: list[dict], apis: dict, p: dict,
            iteration: int, n_trajectories: int, temperature: float, label: str = "sample") -> list[dict]:
    """The optimizer writes `n_trajectories` per task; trajectory j is sampled with seed + j."""
    descriptions = [getattr(a, "description", f"{name}: <argument>") for name, a in apis.items()]
    calls = [f"{name}:" for name in apis]
    grammar = LineGrammar(calls + ["end"], first_line_options=calls + ["none"], terminal=["none", "end"]) if p["constrained"] else None
    # tasks of one category share exemplars, hence a prompt prefix the engine computes once
    groups: dict[str, list[dict]] = {}
    for task in tasks:
        groups.setdefault(task["category"], []).append(task)
    records = []
    for category, group in sorted(groups.items()):
        exemplars = select_exemplars(category, state, p["n_exemplars"])
        prompts = [build_prompt(t, baseline[t["id"]], exemplars, descriptions) for t in group]
        for j in range(n_trajectories):
            gens = optimizer.generate(prompts, max_new_tokens=p["max_new_tokens"], temperature=temperature,
                                      seed=p["seed"] + j, stop=STOP, chat=False, grammar=grammar,
                                      desc=f"{label}: {category} trajectory {j + 1}/{n_trajectories}")
            for task, prompt, g in zip(group, prompts, gens):
                calls, error = ([], f"generation failed ({g.error})") if g.error else parse_trajectory(g.text, set(apis), p["max_calls"])
                record = {"task_id": task["id"], "trajectory_id": f"{task['id']}#{iteration}.{j}", "iteration": iteration,
                          "calls": calls, "raw": g.text, "cost": g.cost, "prompt": prompt,
                          "exemplars": [e.get("task_id", e["task"]) for e in exemplars]}
                if error:
                    record["parse_error"] = error
                records.append(record)
    return sorted(records, key=lambda r: r["trajectory_id"])


def run(params: dict, paths: Paths, iteration: int = 1) -> dict:
    p = params["sample"]
    started = time.monotonic()
    tasks = load_tasks(paths.tasks_train)
    apis = registry(api_context(params, paths))
    policy = lm_mod.load_role(params, "policy", paths)
    optimizer, state = load_optimizer(params, paths, iteration)
    # self-knowledge: the policy's own answers on the observed examples (the call cache keeps them)
    baseline = answer_examples(policy, tasks, "observed", params["lm"]["max_new_tokens"], "sample: policy baseline")
    records = propose(optimizer, tasks, baseline, state, apis, p, iteration, p["n_trajectories"], p["temperature"])

    write_jsonl(paths.trajectories(iteration), records)

    parsed = [r for r in records if "parse_error" not in r]
    manifest = {
        "stage": "sample",
        "iteration": iteration,
        "params": p,
        "optimizer": optimizer.name,
        "counts": {
            "tasks": len(tasks), "learned_exemplars": len(state), "trajectories": len(records),
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
