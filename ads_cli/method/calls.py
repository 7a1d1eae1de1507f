"""Running a trajectory's API calls: the API context, the journal, and assembling executions.

Identical calls across trajectories run once. Each finished call is appended to a journal
(fsynced per chunk), so a killed run resumes without redoing them; executions are then
assembled in trajectory order, so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import orjson

from ..apis import APIContext, APIResult, call_many
from ..cache import call_key
from ..engine.openai import served_identity
from ..engine.roles import load_role
from ..errors import AdsError
from ..paths import Paths
from ..progress import log, phase, track
from .search import Searcher


def api_context(params: dict, paths: Paths) -> APIContext:
    """What the APIs use: the index (opened on first use) and the policy model (loaded on first use)."""
    return APIContext(params, lambda: Searcher(paths.index), lambda: load_role(params, "policy", paths))


def validate_trajectory(record: dict) -> str | None:
    for field in ("task_id", "trajectory_id"):
        if not isinstance(record.get(field), str):
            return f"field {field!r} must be a string"
    calls = record.get("calls")
    if not isinstance(calls, list):
        return "field 'calls' must be a list"
    for c in calls:
        if not (isinstance(c, dict) and isinstance(c.get("api"), str) and isinstance(c.get("arg"), str)):
            return "each call must be {\"api\": str, \"arg\": str}"
    return None


def validate_execution(record: dict) -> str | None:
    for field, kind in (("trajectory_id", str), ("task_id", str), ("items", list), ("errors", list)):
        if not isinstance(record.get(field), kind):
            return f"field {field!r} must be a {kind.__name__}"
    if not isinstance(record.get("cost"), (int, float)):
        return "field 'cost' must be a number"
    return None


def _call_id(api: str, arg: str) -> str:
    return f"{api}\x00{arg}"


def fingerprint(params: dict) -> str:
    """What call results depend on besides (api, arg): a journal written under other settings is void."""
    policy = params["lm"]["policy"]
    if params["lm"]["policy_backend"] == "openai":  # the APIs' model is the served one
        policy = served_identity(params["openai_policy"])
    return call_key(params["apis"], params["index"], policy)[:16]


def read_journal(path: Path, expected: str = "") -> tuple[dict[str, dict], int]:
    """Finished calls, and the length of the journal's intact part.

    The first line names the settings the calls ran with; a journal from other settings counts
    as empty. A torn last line (the process was killed mid-write) is not counted; the caller
    cuts it off before appending, so that it cannot fuse with the next record.
    """
    done: dict[str, dict] = {}
    if not path.exists():
        return done, 0
    data = path.read_bytes()
    valid = 0
    for n, line in enumerate(data.split(b"\n"), start=1):
        end = valid + len(line) + 1
        if end > len(data):  # no newline yet: the write was cut short
            break
        if line.strip():
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise AdsError(f"{path}:{n}: corrupt journal line; delete the file to start execute afresh") from None
            if "journal" in rec:
                if rec["journal"] != expected:
                    log.info("%s: written under other settings; starting afresh", path)
                    return {}, 0
            else:
                done[_call_id(rec["api"], rec["arg"])] = rec
        valid = end
    return done, valid


def run_calls(apis: dict, trajectories: list[dict], journal_path: Path, every: int, journal_key: str,
              desc: str = "execute: calls", max_cost: float | None = None) -> tuple[dict[str, dict], int]:
    """Run each distinct call of `trajectories` once, journaling results; returns (results, resumed).

    Results already in the journal are reused, so a killed run resumes where it stopped. With
    `max_cost`, the run stops cleanly once the calls' cost reaches it (at a chunk boundary, so
    it may pass it by one chunk); what was done stays in the journal for the next run.
    """
    unique: dict[str, tuple[str, str]] = {}
    for t in trajectories:
        for c in t["calls"]:
            unique.setdefault(_call_id(c["api"], c["arg"]), (c["api"], c["arg"]))
    done, intact = read_journal(journal_path, journal_key)
    resumed = sum(cid in done for cid in unique)
    todo = collections.defaultdict(list)
    for cid, (api, arg) in unique.items():
        if cid not in done:
            todo[api].append(arg)
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    if journal_path.exists():
        os.truncate(journal_path, intact)
    spent = sum(done[cid]["cost"] for cid in unique if cid in done)
    with track(desc, total=len(unique) - resumed) as progress, journal_path.open("ab") as journal:
        if intact == 0:
            journal.write(orjson.dumps({"journal": journal_key}) + b"\n")
        for api_name in sorted(todo):
            args = todo[api_name]
            # a chunk is batched through the model, then journaled: small enough to lose little
            for start in range(0, len(args), every):
                if max_cost is not None and spent >= max_cost:
                    finished = sum(cid in done for cid in unique)
                    raise AdsError(f"--max-cost {max_cost:g} reached: {finished}/{len(unique)} calls done, cost {spent:g};"
                                   f" they are kept in {journal_path}; rerun with a larger --max-cost to continue")
                chunk = args[start: start + every]
                if api_name in apis:
                    with phase(f"API calls: {api_name}"):
                        results = call_many(apis[api_name], chunk)
                else:
                    results = [APIResult(api_name, a, ok=False, error=f"unknown API {api_name!r}") for a in chunk]
                for r in results:
                    rec = r.as_dict()
                    done[_call_id(r.api, r.arg)] = rec
                    spent += r.cost
                    if not r.retry:  # a failed server request is asked again by the next run
                        journal.write(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS) + b"\n")
                journal.flush()
                os.fsync(journal.fileno())
                progress.step(len(chunk))
    return {cid: done[cid] for cid in unique}, resumed


def assemble(trajectory: dict, results: dict[str, dict]) -> dict:
    """A trajectory's execution: its calls' items (with provenance), summed cost, errors."""
    items, errors, cost = [], [], 0.0
    if trajectory.get("parse_error"):
        errors.append({"call": None, "error": f"parse error: {trajectory['parse_error']}"})
    for n, c in enumerate(trajectory["calls"]):
        r = results[_call_id(c["api"], c["arg"])]
        cost += r["cost"]
        items.extend(dict(item, call=n) for item in r["items"])
        if r["error"]:
            errors.append({"call": n, "api": c["api"], "arg": c["arg"], "error": r["error"]})
    return {"trajectory_id": trajectory["trajectory_id"], "task_id": trajectory["task_id"], "items": items, "cost": cost, "errors": errors}
