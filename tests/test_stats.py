"""The exact rank-correlation permutation test against the generic loop it replaces, and the crossed
bootstrap over two kinds of independent unit (no model)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from emolens.experiments.intensity import spearman
from emolens.stats import (
    Estimate,
    bootstrap,
    crossed_mean_ci,
    mean_ci,
    permutation_p,
    rank_correlation_p,
)


def looped_p(x: np.ndarray, y: np.ndarray, sign: int, samples: int, seed: int) -> float:
    """The slow reference: scipy's rho on every shuffle, through the generic permutation test."""

    def statistic(perm: np.ndarray) -> float:
        shuffled = x[perm]
        if np.ptp(shuffled) == 0 or np.ptp(y) == 0:
            return 0.0
        return sign * float(scipy_stats.spearmanr(shuffled, y).statistic)

    return permutation_p(statistic, len(x), samples=samples, seed=seed)


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_correlation_p_is_the_looped_permutation_test(sign: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.array([500.0, 1000, 2000, 4000, 8000, 16000, 32000])
    y = np.round(0.3 * np.log(x) + rng.normal(size=x.size), 1)  # rounded: some tied readings
    y[2] = y[4]
    fast = rank_correlation_p(x, y, sign, samples=500, seed=seed)
    assert fast == looped_p(x, y, sign, samples=500, seed=seed)
    assert 0 < fast <= 1


def test_rank_correlation_p_of_constant_readings_is_one() -> None:
    x = np.arange(6.0)
    assert rank_correlation_p(x, np.ones(6), 1, samples=200) == 1.0 == looped_p(x, np.ones(6), 1, 200, 0)


def test_rank_correlation_p_finds_a_perfect_order_and_rejects_a_bad_sign() -> None:
    x = np.arange(8.0)
    assert rank_correlation_p(x, 2 * x, 1, samples=2000) < 0.002
    assert rank_correlation_p(x, 2 * x, -1, samples=2000) == 1.0
    with pytest.raises(ValueError, match="sign"):
        rank_correlation_p(x, x, 0)


def test_columnwise_spearman_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=9)
    ys = np.column_stack([rng.normal(size=9), np.ones(9), np.round(rng.normal(size=9))])
    expected = [scipy_stats.spearmanr(x, ys[:, 0]).statistic, 0.0, scipy_stats.spearmanr(x, ys[:, 2]).statistic]
    np.testing.assert_allclose(spearman(x, ys), expected, atol=1e-12)


def width(estimate: Estimate) -> float:
    return estimate.high - estimate.low


def test_crossed_interval_sees_the_spread_between_rows_that_a_per_column_interval_misses() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 3, size=(6, 1))  # six steered directions that disagree; the prompts agree
    table = rows + rng.normal(0, 0.01, size=(6, 12))
    crossed = crossed_mean_ci(table)
    per_column = mean_ci(table.mean(axis=0))  # resamples prompts only: blind to the directions
    per_row = mean_ci(table.mean(axis=1))
    assert crossed.value == pytest.approx(table.mean(), abs=1e-6)
    assert width(per_column) < 0.05 < 0.5 * width(per_row) < width(crossed)
    assert crossed.n == 6


def test_crossed_bootstrap_of_one_kind_is_the_bootstrap() -> None:
    values = np.random.default_rng(2).normal(size=9)
    assert crossed_mean_ci(values[None, :].repeat(2, axis=0)).value == pytest.approx(values.mean(), abs=1e-6)
    rng = np.random.default_rng(0)  # the single-kind bootstrap every other interval uses, drawn by hand
    draws = [values[rng.integers(0, 9, 9)].mean() for _ in range(1000)]
    low, high = np.percentile(draws, [2.5, 97.5])
    estimate = bootstrap(lambda idx: float(values[idx].mean()), 9)
    assert (estimate.low, estimate.high) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
    with pytest.raises(ValueError, match="at least 2"):
        crossed_mean_ci(np.zeros((1, 4)))
