import pytest

from ads_cli.method.stats import bootstrap_ci, correlation, mean, paired_summary, win_tie_loss


def test_win_tie_loss_by_hand():
    a = [0.5, 0.2, 0.30, 0.0]
    b = [0.1, 0.2, 0.28, 0.4]
    assert win_tie_loss(a, b, epsilon=0.05) == {"win_rate": 0.25, "tie_rate": 0.5, "loss_rate": 0.25}
    assert win_tie_loss([], [], 0.0) == {"win_rate": 0.0, "tie_rate": 0.0, "loss_rate": 0.0}


def test_bootstrap_of_a_constant_is_that_constant():
    assert bootstrap_ci([0.25] * 10) == (0.25, 0.25)


def test_bootstrap_brackets_the_mean_and_is_deterministic():
    diffs = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, -0.1, 0.25]
    lo, hi = bootstrap_ci(diffs, seed=1)
    assert lo < mean(diffs) < hi
    assert bootstrap_ci(diffs, seed=1) == (lo, hi)
    assert -0.1 <= lo and hi <= 0.5


def test_bootstrap_of_two_values_covers_both_extremes():
    # resampling [0, 1] gives means 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4
    lo, hi = bootstrap_ci([0.0, 1.0], n_resamples=4000)
    assert (lo, hi) == (0.0, 1.0)


def test_paired_summary():
    s = paired_summary([1.0, 0.5], [0.5, 0.5], epsilon=0.0)
    assert s["mean_diff"] == pytest.approx(0.25) and s["win_rate"] == 0.5 and s["tie_rate"] == 0.5 and s["n"] == 2


def test_correlation_by_hand():
    # x = 1, 2, 3; y = 2, 4, 5: sxy = 3, sxx = 2, syy = 4.667 -> r = 3 / sqrt(9.333) = 0.9820
    assert correlation([(1, 2), (2, 4), (3, 5)]) == 0.982
    assert correlation([(1, 3), (2, 2), (3, 1)]) == -1.0
    assert correlation([(1, 2), (2, 2), (3, 2)]) is None and correlation([(1, 2), (2, 3)]) is None
