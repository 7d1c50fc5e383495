"""The statistics drift is measured with: PSI terms, a two-sample Kolmogorov-Smirnov test
against a reference known by its quantiles, and per-share changes with a two-proportion z-test
(predicted classes, categories of a categorical input feature)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
FLOOR = 1e-4
"""Empty bins count as this fraction, so that the logarithm stays finite."""


def psi_terms(reference: npt.ArrayLike, current: npt.ArrayLike) -> Array:
    """Per-bin PSI terms; their sum is the PSI."""
    ref = np.maximum(np.asarray(reference, dtype=np.float64), FLOOR)
    cur = np.maximum(np.asarray(current, dtype=np.float64), FLOOR)
    return np.asarray((cur - ref) * np.log(cur / ref))


def kolmogorov_pvalue(statistic: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic (Numerical Recipes' `probks`)."""
    if n == 0 or m == 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * statistic
    if lam < 1e-3:
        return 1.0
    total, sign = 0.0, 1.0
    for j in range(1, 101):
        term = sign * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-10:
            break
        sign = -sign
    return float(min(max(2.0 * total, 0.0), 1.0))


def reference_cdf(points: Array, quantiles: Sequence[float], *, left: bool = False) -> Array:
    """The reference CDF at `points` (just below them when `left`), from its quantiles at
    0, 1/k, ..., 1: linear between distinct quantiles, a step where quantiles repeat (a value
    that holds many samples, as discrete features have)."""
    q = np.asarray(quantiles, dtype=np.float64)
    k = len(q) - 1
    j = np.searchsorted(q, points, side="left" if left else "right")
    lo = np.clip(j - 1, 0, k)
    hi = np.clip(j, 0, k)
    span = q[hi] - q[lo]
    frac = np.where(span > 0, (points - q[lo]) / np.where(span > 0, span, 1.0), 0.0)
    cdf = (lo + np.clip(frac, 0.0, 1.0)) / k
    return np.where(j == 0, 0.0, np.where(j > k, 1.0, cdf))


def ks_against_quantiles(
    current: Array, quantiles: Sequence[float], reference_samples: int
) -> tuple[float, float]:
    """KS statistic and p-value of `current` against a reference known by its quantiles.

    Both CDFs are compared at and just below every current value and reference quantile,
    which is where their difference can peak."""
    values = np.sort(np.asarray(current, dtype=np.float64))
    if values.size == 0:
        return 0.0, 1.0
    points = np.unique(np.concatenate([values, np.asarray(quantiles, dtype=np.float64)]))
    at = np.searchsorted(values, points, side="right") / values.size
    below = np.searchsorted(values, points, side="left") / values.size
    statistic = float(
        max(
            np.abs(at - reference_cdf(points, quantiles)).max(),
            np.abs(below - reference_cdf(points, quantiles, left=True)).max(),
        )
    )
    return statistic, kolmogorov_pvalue(statistic, values.size, reference_samples)


def share_changes(
    reference: Sequence[float], counts: Array, reference_samples: int
) -> tuple[Array, Array, Array]:
    """Current shares, PSI terms and two-proportion z statistics of the change, per share:
    `reference` shares (of `reference_samples`) against current `counts` (same length)."""
    total = max(counts.sum(), 1)  # no current values: every share 0, not NaN
    current = counts / total
    terms = psi_terms(reference, current)
    ref = np.asarray(reference)
    pooled = (ref * reference_samples + counts) / (reference_samples + total)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / reference_samples + 1 / total))
    z = np.abs(current - ref) / np.where(spread > 0, spread, np.inf)
    return current, terms, z
