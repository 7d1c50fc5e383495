"""Reference profiles: what a version's inputs and predictions looked like when it was trained,
so that production traffic can be compared with it (drift).

A profile is a small JSON-ready dict stored in the version's config (`reference`). It holds,
per input feature, fixed histogram bin edges with the reference's bin fractions (for the
population stability index) and 101 quantiles (for a two-sample Kolmogorov-Smirnov test), and
the class distribution and confidence histogram of predictions on held-out data (for a
regressor: the distribution of its predicted values, and its RMSE when targets were given).

Features are few and interpretable, so that "what moved" has an answer a person can act on:

- images (C,H,W or H,W): mean intensity, ink fraction, ink centroid x/y, ink bounding-box
  width/height, and mean intensity on a coarse grid of blocks (4x4 by default);
- vectors: the features themselves, at most 32 (the highest-variance ones). A vector feature
  whose reference values are all whole numbers, with at most `MAX_CATEGORIES` distinct ones
  and at least `MIN_PER_CATEGORY` samples per distinct value, is categorical (a cylinder
  count, a model year, a region id, a sex code): its summary also holds the share of each
  value (`categories`, `shares`), so drift compares category shares rather than deciles that
  lump categories together.

Everything is numpy and deterministic: the same data gives the same profile, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

PROFILE_FORMAT = 1
QUANTILES = 101
"""Quantiles stored per feature: 0%, 1%, ..., 100%."""
BINS = 10
"""Histogram bins per feature: the reference's deciles, so each holds ~10% of it."""
CONFIDENCE_EDGES = tuple(round(0.1 * i, 1) for i in range(11))
MAX_VECTOR_FEATURES = 32
MAX_SAMPLES = 20_000
"""Reference inputs profiled at most (a fixed-seed subsample beyond it)."""
GRID = 4
MAX_CATEGORIES = 20
"""A whole-number vector feature with at most this many distinct reference values is
categorical; more, and it is treated as a number (an age in years, a count)."""
MIN_PER_CATEGORY = 5
"""... provided the reference has at least this many samples per distinct value on average:
a small reference sees few distinct values of any whole-number feature, and shares of a
handful of samples would say little."""

Array = npt.NDArray[Any]


def _round(values: Array | Sequence[float]) -> list[float]:
    # Six significant digits keep fractions and moments compact; they are only compared
    # approximately.
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64).tolist()]


def _exact(values: Array | Sequence[float]) -> list[float]:
    # Edges and quantiles keep full precision: served inputs give exactly the values the
    # reference had (a discrete feature sits on them), and a rounded edge would move them
    # to the neighbouring bin.
    return [float(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def is_image(input_shape: Sequence[int]) -> bool:
    """(C,H,W) with few channels, or (H,W), both at least 4x4."""
    shape = tuple(input_shape)
    if len(shape) == 3:
        return shape[0] <= 4 and min(shape[1:]) >= 4
    return len(shape) == 2 and min(shape) >= 4


def _grayscale(x: Array, input_shape: Sequence[int]) -> Array:
    images = np.asarray(x, dtype=np.float64).reshape(len(x), *input_shape)
    return images.mean(axis=1) if images.ndim == 4 else images


def image_features(x: Array, spec: dict[str, Any]) -> tuple[list[str], Array]:
    """Feature names and the (samples x features) matrix for images, as `spec` defines them
    (`input_shape`, `ink_threshold`, `grid`)."""
    g = _grayscale(x, spec["input_shape"])
    n, h, w = g.shape
    threshold = float(spec["ink_threshold"])
    ink = g > threshold
    any_ink = ink.reshape(n, -1).any(axis=1)
    weight = np.clip(g - float(spec["value_min"]), 0.0, None)
    total = weight.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    cols = (np.arange(w) + 0.5) / w
    rows = (np.arange(h) + 0.5) / h
    centroid_x = np.where(total > 0, (weight.sum(axis=1) * cols).sum(axis=1) / safe, 0.5)
    centroid_y = np.where(total > 0, (weight.sum(axis=2) * rows).sum(axis=1) / safe, 0.5)
    col_ink, row_ink = np.asarray(ink.any(axis=1)), np.asarray(ink.any(axis=2))
    width = np.where(any_ink, (w - col_ink[:, ::-1].argmax(1) - col_ink.argmax(1)) / w, 0.0)
    height = np.where(any_ink, (h - row_ink[:, ::-1].argmax(1) - row_ink.argmax(1)) / h, 0.0)
    names = [
        "mean_intensity",
        "ink_fraction",
        "centroid_x",
        "centroid_y",
        "bbox_width",
        "bbox_height",
    ]
    columns = [
        g.mean(axis=(1, 2)),
        ink.mean(axis=(1, 2)),
        centroid_x,
        centroid_y,
        width,
        height,
    ]
    grid_rows, grid_cols = spec["grid"]
    for r, row_block in enumerate(np.array_split(np.arange(h), grid_rows)):
        for c, col_block in enumerate(np.array_split(np.arange(w), grid_cols)):
            names.append(f"block_r{r}c{c}")
            columns.append(g[:, row_block][:, :, col_block].mean(axis=(1, 2)))
    return names, np.stack(columns, axis=1)


CHUNK = 4096
"""Images featurised at a time: the float64 work arrays stay small whatever len(x) is."""


def features(x: Array, spec: dict[str, Any]) -> tuple[list[str], Array]:
    """The profile's feature matrix for inputs `x` (samples x features), as `spec` says."""
    if spec["kind"] == "image":
        if len(x) <= CHUNK:
            return image_features(x, spec)
        parts = [image_features(x[i : i + CHUNK], spec) for i in range(0, len(x), CHUNK)]
        return parts[0][0], np.concatenate([m for _, m in parts])
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    indices = list(spec["indices"])
    return [f"x[{i}]" for i in indices], flat[:, indices]


def input_spec(x: Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """How features are computed for this data (fixed from the reference, reused on traffic)."""
    shape = [int(d) for d in input_shape]
    if is_image(shape):
        g = _grayscale(x, shape)
        lo, hi = float(g.min()), float(g.max())
        h, w = g.shape[1:]
        return {
            "kind": "image",
            "input_shape": shape,
            "value_min": lo,
            "value_max": hi,
            # Half-way between background and full ink: 0.5 for pixels in [0, 1].
            "ink_threshold": lo + 0.5 * (hi - lo),
            "grid": [min(GRID, h), min(GRID, w)],
        }
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    variance = flat.var(axis=0)
    # Highest variance first; ties by index, so the choice is deterministic.
    order = np.lexsort((np.arange(flat.shape[1]), -variance))
    return {
        "kind": "vector",
        "input_shape": shape,
        "indices": sorted(int(i) for i in order[:MAX_VECTOR_FEATURES]),
    }


def bin_edges(values: Array) -> list[float]:
    """Interior bin edges at the deciles of `values` (duplicates removed: constant features
    get one edge, i.e. two bins)."""
    inner = np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])
    return _exact(np.unique(inner))


def bin_fractions(values: Array, edges: Sequence[float]) -> Array:
    """Fraction of `values` in each bin (-inf, e0], (e0, e1], ..., (ek, inf)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def feature_summary(values: Array) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    edges = bin_edges(values)
    return {
        "edges": edges,
        "fractions": _round(bin_fractions(values, edges)),
        "quantiles": _exact(np.quantile(values, np.linspace(0, 1, QUANTILES))),
        "mean": _round([values.mean()])[0],
        "std": _round([values.std()])[0],
    }


def categories(values: Array) -> Array | None:
    """The distinct values of a categorical feature (sorted), or None when it is numeric
    (see `MAX_CATEGORIES`, `MIN_PER_CATEGORY`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        return None
    distinct = np.unique(values)
    if len(distinct) > MAX_CATEGORIES or values.size < MIN_PER_CATEGORY * len(distinct):
        return None
    return distinct


def category_counts(values: Array, distinct: Array) -> Array:
    """How many of `values` equal each of `distinct` (sorted), and last how many equal none
    of them (values the reference never had)."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(distinct, values)
    known = (index < len(distinct)) & (distinct[np.minimum(index, len(distinct) - 1)] == values)
    return np.bincount(np.where(known, index, len(distinct)), minlength=len(distinct) + 1)


def categorical_summary(values: Array, distinct: Array) -> dict[str, Any]:
    """`feature_summary` (kept, so that KS and readers of numeric summaries work as before)
    plus the categories and their shares."""
    return {
        **feature_summary(values),
        "kind": "categorical",
        "categories": [int(v) for v in distinct.tolist()],
        "shares": _round(category_counts(values, distinct)[:-1] / max(values.size, 1)),
    }


def _summary(values: Array, vector: bool) -> dict[str, Any]:
    distinct = categories(values) if vector else None
    return feature_summary(values) if distinct is None else categorical_summary(values, distinct)


def input_profile(x: Array, input_shape: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """The input half of a reference profile, from the training inputs `x`."""
    if len(x) > MAX_SAMPLES:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_SAMPLES, replace=False))
        x = x[keep]
    spec = input_spec(x, input_shape)
    names, matrix = features(x, spec)
    vector = spec["kind"] == "vector"
    return {
        **spec,
        "samples": len(x),
        "features": {name: _summary(matrix[:, i], vector) for i, name in enumerate(names)},
    }


def confidences(scores: Array) -> tuple[Array, Array]:
    """Predicted class and its probability per row, with the same rule as the traffic log
    (`kiln.traffic.records.predictions_and_confidences`): rows that are already
    probabilities are used as they are, anything else is softmaxed."""
    s = np.asarray(scores, dtype=np.float64)
    top = s.argmax(axis=1)
    top_score = s[np.arange(len(s)), top]
    softmax_top = 1.0 / np.exp(s - top_score[:, None]).sum(axis=1)
    probabilities = (s.min(axis=1) >= 0.0) & (np.abs(s.sum(axis=1) - 1.0) < 1e-3)
    return top, np.where(probabilities, top_score, softmax_top)


def prediction_profile(scores: Array, labels: Array | None = None) -> dict[str, Any]:
    """The prediction half: class shares and the confidence distribution on held-out data."""
    top, conf = confidences(scores)
    classes = np.asarray(scores).shape[1]
    profile: dict[str, Any] = {
        "samples": len(top),
        "class_fractions": _round(np.bincount(top, minlength=classes) / max(len(top), 1)),
        "confidence": {
            "edges": list(CONFIDENCE_EDGES[1:-1]),
            "fractions": _round(bin_fractions(conf, CONFIDENCE_EDGES[1:-1])),
            "quantiles": _exact(np.quantile(conf, np.linspace(0, 1, QUANTILES))),
            "mean": _round([conf.mean()])[0],
        },
    }
    if labels is not None:
        profile["accuracy"] = _round([float((top == np.asarray(labels)).mean())])[0]
    return profile


def regression_prediction_profile(outputs: Array, targets: Array | None = None) -> dict[str, Any]:
    """The prediction half for a regressor: the distribution of its predicted values on
    held-out data (`outputs` of shape (n,) or (n, 1)), plus the RMSE against `targets`."""
    values = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)[:, 0]
    profile: dict[str, Any] = {
        "samples": len(values),
        "task": "regression",
        "value": feature_summary(values),
    }
    if targets is not None:
        error = values - np.asarray(targets, dtype=np.float64).reshape(-1)
        profile["rmse"] = _round([float(np.sqrt(np.mean(error**2)))])[0]
    return profile


def reference_profile(
    x_train: Array,
    input_shape: Sequence[int],
    held_out_scores: Array,
    held_out_labels: Array | None = None,
    *,
    task: str = "classification",
) -> dict[str, Any]:
    """What `kiln train` stores with a version: input features of the training data and
    predictions on the held-out split (class scores and labels, or, with
    task="regression", predicted values and targets)."""
    predictions = (
        regression_prediction_profile(held_out_scores, held_out_labels)
        if task == "regression"
        else prediction_profile(held_out_scores, held_out_labels)
    )
    return {
        "format": PROFILE_FORMAT,
        "inputs": input_profile(x_train, input_shape),
        "predictions": predictions,
    }
