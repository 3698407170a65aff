"""Uncertainty for every reported number: bootstrap intervals, permutation tests, correlations.

Resample the *independent unit* (emotions, prompts, scenarios), never tokens or the two
stories of one emotion. Every function is seeded and returns plain floats, ready for JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats

BOOTSTRAP_SAMPLES = 1000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% bootstrap interval (``low <= value <= high`` up to resampling noise)."""

    value: float
    low: float
    high: float
    n: int  # number of independent units resampled

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return estimate_text(self.to_dict())


def estimate_text(estimate: Mapping[str, float] | None, digits: int = 3, signed: bool = True) -> str:
    """``value [low, high]`` of an estimate's ``to_dict()`` (as stored in results), ``-`` for None."""
    if estimate is None:
        return "-"
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"{estimate['value']:{spec}} [{estimate['low']:{spec}}, {estimate['high']:{spec}}]"


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n_units: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Estimate:
    """Percentile 95% interval of ``statistic(unit_indices)`` over units resampled with replacement.

    ``statistic`` receives an index array into the units (length ``n_units``) so it can
    resample whole rows of several aligned arrays at once.
    """
    return crossed_bootstrap(statistic, (n_units,), samples, seed)


def crossed_bootstrap(
    statistic: Callable[..., float],
    n_units: Sequence[int],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Estimate:
    """``bootstrap`` over several independent kinds of unit at once (say steered directions and prompts).

    Each draw resamples every kind with replacement, independently, and calls
    ``statistic(*index_arrays)`` with one index array per kind (lengths ``n_units``). With one
    kind it is ``bootstrap``, draw for draw. ``Estimate.n`` is the first kind's count.
    """
    if min(n_units) < 2:
        raise ValueError(f"need at least 2 independent units of each kind for a bootstrap interval, got {n_units}")
    rng = np.random.default_rng(seed)
    value = float(statistic(*(np.arange(n) for n in n_units)))
    draws = np.array([statistic(*(rng.integers(0, n, n) for n in n_units)) for _ in range(samples)], dtype=float)
    draws = draws[np.isfinite(draws)]
    first = n_units[0]
    if draws.size == 0:
        return Estimate(value, float("nan"), float("nan"), first)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Estimate(round(value, 6), round(float(min(low, value)), 6), round(float(max(high, value)), 6), first)


def mean_ci(values: np.ndarray | list[float], seed: int = 0) -> Estimate:
    """Mean of ``values`` (one per independent unit) with a bootstrap interval."""
    array = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: float(array[idx].mean()), array.size, seed=seed)


def crossed_mean_ci(values: np.ndarray, seed: int = 0) -> Estimate:
    """Mean of a ``[row, column]`` table whose rows and columns are both independent units
    (steered emotions x prompts), with an interval that resamples rows and columns."""
    table = np.asarray(values, dtype=float)
    return crossed_bootstrap(lambda rows, cols: float(table[np.ix_(rows, cols)].mean()), table.shape, seed=seed)


def correlation_ci(
    x: np.ndarray | list[float], y: np.ndarray | list[float], method: str = "pearson", seed: int = 0
) -> Estimate:
    """Pearson or Spearman correlation of paired units with a bootstrap interval over units."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"x and y must pair up, got shapes {a.shape} and {b.shape}")

    def corr(idx: np.ndarray) -> float:
        xa, yb = a[idx], b[idx]
        if np.ptp(xa) == 0 or np.ptp(yb) == 0:
            return float("nan")
        if method == "spearman":
            return float(scipy_stats.spearmanr(xa, yb).statistic)
        if method == "pearson":
            return float(np.corrcoef(xa, yb)[0, 1])
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")

    return bootstrap(corr, a.size, seed=seed)


def permutation_p(statistic: Callable[[np.ndarray], float], n_units: int, samples: int = 2000, seed: int = 0) -> float:
    """One-sided p-value that ``statistic(permutation)`` reaches ``statistic(identity)``.

    ``statistic`` receives a permutation of ``range(n_units)`` (the shuffled labels);
    the +1 correction keeps p > 0.
    """
    rng = np.random.default_rng(seed)
    observed = statistic(np.arange(n_units))
    null = np.array([statistic(rng.permutation(n_units)) for _ in range(samples)])
    return float((1 + np.sum(null >= observed)) / (1 + samples))


def rank_correlation_p(x: np.ndarray, y: np.ndarray, sign: int = 1, samples: int = 2000, seed: int = 0) -> float:
    """One-sided permutation p of Spearman's rho(``x``, ``y``) in the direction ``sign`` (+1 or -1).

    The same test as ``permutation_p(lambda perm: sign * rho(x[perm], y), len(x))``, on the
    same permutations, computed at once and exactly: with ties as average ranks, twice a
    rank is an integer, and rho grows with the integer dot product of the doubled ranks
    (the centring and scale do not depend on the permutation). So ties between a shuffle
    and the observed order compare as ties, with no rounding.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    rng = np.random.default_rng(seed)
    doubled_x = np.rint(2 * scipy_stats.rankdata(x)).astype(np.int64)  # n
    doubled_y = np.rint(2 * scipy_stats.rankdata(y)).astype(np.int64)  # n
    shuffles = np.stack([rng.permutation(len(doubled_x)) for _ in range(samples)])  # sample x n
    observed = sign * int(doubled_x @ doubled_y)
    null = sign * (doubled_x[shuffles] @ doubled_y)  # sample
    return float((1 + np.sum(null >= observed)) / (1 + samples))
