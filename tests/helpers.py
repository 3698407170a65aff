"""Assertions shared by the experiment tests."""

from __future__ import annotations

import math
from typing import Any


def check_estimate(estimate: dict[str, Any]) -> None:
    """An ``emolens.stats.Estimate`` dict: finite, and its interval contains its value."""
    assert set(estimate) == {"value", "low", "high", "n"}
    assert all(math.isfinite(estimate[k]) for k in ("value", "low", "high"))
    assert estimate["low"] - 1e-9 <= estimate["value"] <= estimate["high"] + 1e-9
