"""Bradley-Terry scores (on the Elo scale) from soft pairwise preferences, with bootstrap intervals.

A comparison is ``(i, j, p)``: item ``i`` preferred to item ``j`` with probability ``p``
(a model's two-option choice probability, position bias already averaged out). The model
is ``P(i beats j) = sigmoid(s_i - s_j)``; strengths are fitted by Newton's method on the
soft-label log-likelihood with a small ridge penalty (so an item that wins every
comparison still has a finite score) and centred. Elo = ``1500 + s * 400 / ln 10``, so
a 400-point gap is 10:1 odds, as in chess.
"""

from __future__ import annotations

import math

import numpy as np

from emolens.stats import BOOTSTRAP_SAMPLES, Estimate

ELO_SCALE = 400.0 / math.log(10.0)
ELO_CENTRE = 1500.0
RIDGE = 1e-3


def check_comparisons(winners: np.ndarray, losers: np.ndarray, probability: np.ndarray, n_items: int) -> None:
    if not (winners.shape == losers.shape == probability.shape) or winners.ndim != 1:
        raise ValueError("winners, losers and probability must be 1-d arrays of the same length")
    if winners.size == 0:
        raise ValueError("no comparisons given; pass at least one (i, j, p)")
    if np.any((winners < 0) | (winners >= n_items) | (losers < 0) | (losers >= n_items)):
        raise ValueError(f"item indices must be in 0..{n_items - 1}")
    if np.any(winners == losers):
        raise ValueError("an item cannot be compared with itself; drop pairs with i == j")
    if not np.all(np.isfinite(probability)) or np.any((probability < 0) | (probability > 1)):
        raise ValueError("preference probabilities must be finite and in [0, 1]")


def bradley_terry(
    first: np.ndarray, second: np.ndarray, p_first: np.ndarray, n_items: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Centred log-strengths ``s`` (length ``n_items``) maximising the soft-label likelihood.

    ``p_first[k]`` is the probability that ``first[k]`` is preferred to ``second[k]``;
    ``weights[k]`` counts comparison ``k`` (bootstrap multiplicities).
    """
    first, second = np.asarray(first, dtype=int), np.asarray(second, dtype=int)
    target = np.asarray(p_first, dtype=float)
    check_comparisons(first, second, target, n_items)
    weight = np.ones_like(target) if weights is None else np.asarray(weights, dtype=float)
    strengths = np.zeros(n_items)
    for _ in range(100):
        predicted = 1.0 / (1.0 + np.exp(-(strengths[first] - strengths[second])))
        residual = weight * (target - predicted)
        gradient = np.bincount(first, residual, n_items) - np.bincount(second, residual, n_items) - RIDGE * strengths
        curvature = weight * predicted * (1.0 - predicted)
        hessian = np.zeros((n_items, n_items))
        np.add.at(hessian, (first, second), curvature)
        np.add.at(hessian, (second, first), curvature)
        hessian -= np.diag(hessian.sum(axis=1))
        hessian -= RIDGE * np.eye(n_items)
        step = np.linalg.solve(hessian, -gradient)
        strengths = strengths + step
        if np.max(np.abs(step)) < 1e-9:
            break
    return strengths - strengths.mean()


def to_elo(strengths: np.ndarray) -> np.ndarray:
    """Elo points of centred Bradley-Terry log-strengths."""
    return ELO_CENTRE + ELO_SCALE * np.asarray(strengths, dtype=float)


def elo_scores(first: np.ndarray, second: np.ndarray, p_first: np.ndarray, n_items: int) -> np.ndarray:
    """Bradley-Terry scores of every item on the Elo scale (mean 1500)."""
    return to_elo(bradley_terry(first, second, p_first, n_items))


def elo_intervals(
    first: np.ndarray,
    second: np.ndarray,
    p_first: np.ndarray,
    n_items: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> list[Estimate]:
    """Each item's Elo score with a 95% interval from refits on comparisons resampled with replacement."""
    values = elo_scores(first, second, p_first, n_items)
    rng = np.random.default_rng(seed)
    n = len(p_first)
    draws = np.stack(
        [
            to_elo(bradley_terry(first, second, p_first, n_items, np.bincount(rng.integers(0, n, n), minlength=n)))
            for _ in range(samples)
        ]
    )
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return [
        Estimate(round(float(v), 3), round(float(min(lo, v)), 3), round(float(max(hi, v)), 3), n)
        for v, lo, hi in zip(values, low, high, strict=True)
    ]
