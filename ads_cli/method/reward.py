"""The reward of a trajectory, and rejection sampling: which trajectory a task keeps.

reward = gain - lambda * cost / cost_scale, where gain is the policy's mean score on the task's
held-out examples with the trajectory's data minus without it. Per task the best trajectory is
kept, against the implicit empty one (reward 0, cost 0): the optimizer can learn that
collecting nothing is best.
"""

from __future__ import annotations

from .optimizer import format_calls


def reward(gain: float, cost: float, lam: float, cost_scale: float) -> float:
    return gain - lam * cost / cost_scale


def select_best(rows: list[dict], min_reward: float) -> dict | None:
    """The task's best parsed trajectory against the implicit empty one (reward 0, cost 0).

    Ties go to the cheaper one, then the smaller trajectory id. Returns None when even the best
    is below `min_reward`. An empty result `{"calls": [], ...}` means "collect nothing".
    """
    none = {"trajectory_id": None, "calls": [], "reward": 0.0, "cost": 0.0}
    candidates = [r for r in rows if "parse_error" not in r] + [none]
    best = min(candidates, key=lambda r: (-r["reward"], r["cost"], r["trajectory_id"] or ""))
    return best if best["reward"] >= min_reward else None


def preference_pairs(rows: list[dict], prompt: str) -> dict | None:
    parsed = sorted((r for r in rows if "parse_error" not in r), key=lambda r: (-r["reward"], r["trajectory_id"]))
    if len(parsed) < 2 or parsed[0]["reward"] == parsed[-1]["reward"]:
        return None
    return {"task_id": parsed[0]["task_id"], "prompt": prompt, "chosen": format_calls(parsed[0]["calls"]) + "\nend",
            "rejected": format_calls(parsed[-1]["calls"]) + "\nend", "reward_chosen": parsed[0]["reward"], "reward_rejected": parsed[-1]["reward"]}
