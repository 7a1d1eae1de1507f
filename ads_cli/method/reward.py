"""The reward of a trajectory, and rejection sampling: which trajectory a task keeps.

reward = gain - lambda * cost / cost_scale, where gain is the mean over the task's held-out
examples of score(policy + data) - score(policy), in the lens `train.reward` names (likelihood
by default: a 135M policy's metric is 0 with or without data on most tasks, so a metric reward
is 0 almost everywhere and there is nothing to learn from).

A trajectory is accepted only if its gain clears the noise (`clears_noise`); per task the best
accepted one is kept, against the implicit empty one (reward 0, cost 0): the optimizer can
learn that collecting nothing is best. Data an earlier iteration kept stays while nothing new
does at least as well (`keeps_earlier`).
"""

from __future__ import annotations

from .optimizer import format_calls
from .stats import bootstrap_ci, mean

NOISE_LEVEL = 0.95  # the bootstrap interval whose lower bound must clear 0


def gains(with_data: list[float], without: list[float]) -> list[float]:
    """Per held-out example: the score with the data minus the score without."""
    return [round(a - b, 6) for a, b in zip(with_data, without)]


def clears_noise(per_example: list[float], seed: int = 0) -> bool:
    """The acceptance rule: the lower bound of the 95% bootstrap interval of the mean
    per-example gain is above 0.

    A gain that a resample of the held-out examples can turn to 0 or below is the noise of a few
    examples, not the data helping. Accepting any non-zero score is how nonsense demonstrations
    got into DSPy's bootstrapped few-shot sets and lowered performance (stanfordnlp/dspy#1121).
    """
    if len(per_example) < 2 or mean(per_example) <= 0:
        return False
    return bootstrap_ci(per_example, seed, level=NOISE_LEVEL)[0] > 0


def reward(gain: float, cost: float, lam: float, cost_scale: float) -> float:
    return gain - lam * cost / cost_scale


def select_best(rows: list[dict], min_reward: float) -> dict | None:
    """The task's best accepted trajectory against the implicit empty one (reward 0, cost 0).

    Only parsed rows whose gain cleared the noise (`accepted`) compete. Ties go to the cheaper
    one, then the smaller trajectory id. Returns None when even the best is below `min_reward`.
    An empty result `{"calls": [], ...}` means "collect nothing".
    """
    none = {"trajectory_id": None, "calls": [], "reward": 0.0, "cost": 0.0}
    candidates = [r for r in rows if "parse_error" not in r and r["accepted"]] + [none]
    best = min(candidates, key=lambda r: (-r["reward"], r["cost"], r["trajectory_id"] or ""))
    return best if best["reward"] >= min_reward else None


def keeps_earlier(earlier: dict | None, best: dict) -> bool:
    """Whether a task keeps the exemplar an earlier iteration learned instead of this iteration's
    best: when it collected something and its reward is at least as high. The policy and the
    held-out examples are the same in every iteration, so the rewards compare; without this, an
    iteration whose samples all fail the noise test would forget a trajectory that passed it."""
    return earlier is not None and bool(earlier["calls"]) and earlier["reward"] >= best["reward"]


def preference_pairs(rows: list[dict], prompt: str) -> dict | None:
    parsed = sorted((r for r in rows if "parse_error" not in r), key=lambda r: (-r["reward"], r["trajectory_id"]))
    if len(parsed) < 2 or parsed[0]["reward"] == parsed[-1]["reward"]:
        return None
    return {"task_id": parsed[0]["task_id"], "prompt": prompt, "chosen": format_calls(parsed[0]["calls"]) + "\nend",
            "rejected": format_calls(parsed[-1]["calls"]) + "\nend", "reward_chosen": parsed[0]["reward"], "reward_rejected": parsed[-1]["reward"]}
