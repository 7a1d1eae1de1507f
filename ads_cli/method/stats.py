"""Paired statistics over tasks: bootstrap confidence intervals and win/tie/loss."""

from __future__ import annotations

import random
from typing import Sequence


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def bootstrap_ci(diffs: Sequence[float], seed: int = 0, n_resamples: int = 2000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (one value per task)."""
    if not diffs:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))
    lo = means[int((1 - level) / 2 * n_resamples)]
    hi = means[min(n_resamples - 1, int((1 + level) / 2 * n_resamples))]
    return (round(lo, 6), round(hi, 6))


def win_tie_loss(a: Sequence[float], b: Sequence[float], epsilon: float) -> dict[str, float]:
    """Rates over paired values: a wins when it beats b by more than epsilon."""
    n = len(a)
    if n == 0:
        return {"win_rate": 0.0, "tie_rate": 0.0, "loss_rate": 0.0}
    wins = sum(x - y > epsilon for x, y in zip(a, b))
    losses = sum(y - x > epsilon for x, y in zip(a, b))
    return {"win_rate": wins / n, "tie_rate": (n - wins - losses) / n, "loss_rate": losses / n}


def paired_summary(a: Sequence[float], b: Sequence[float], epsilon: float, seed: int = 0) -> dict:
    diffs = [x - y for x, y in zip(a, b)]
    lo, hi = bootstrap_ci(diffs, seed)
    return {"mean_a": round(mean(a), 6), "mean_b": round(mean(b), 6), "mean_diff": round(mean(diffs), 6),
            "ci95": [lo, hi], "n": len(diffs)} | win_tie_loss(a, b, epsilon)


def correlation(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Pearson's r over (x, y) pairs; None when fewer than 3 pairs or either side is constant."""
    if len(pairs) < 3:
        return None
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    mx, my = mean(xs), mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return round(sxy / (sxx * syy) ** 0.5, 4) if sxx > 0 and syy > 0 else None
