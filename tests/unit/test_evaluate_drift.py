"""Drift measures against hand computations and scipy, and drift found (or not) end to end:
the same distribution is stable; moved blobs are named by the features that moved."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.data.profile import reference_profile
from kiln.evaluate import DriftThresholds, VersionInfo, evaluate_traffic
from kiln.evaluate.drift import (
    kolmogorov_pvalue,
    ks_against_quantiles,
    prediction_drift,
    psi_terms,
    samples_from_inputs,
)
from kiln.traffic import TrafficLogger, TrafficRecord, TrafficSettings, Window

NOW = datetime.now(UTC)


def test_psi_by_hand() -> None:
    terms = psi_terms([0.5, 0.5], [0.25, 0.75])
    assert terms.tolist() == pytest.approx([0.25 * math.log(2), 0.25 * math.log(1.5)])
    assert psi_terms([0.3, 0.7], [0.3, 0.7]).sum() == 0.0
    assert np.isfinite(psi_terms([0.0, 1.0], [0.5, 0.5]).sum())  # empty bins are floored


def test_ks_against_quantiles_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 50_000)
    quantiles = np.quantile(reference, np.linspace(0, 1, 101))
    for shift in (0.0, 0.1, 0.5):
        current = rng.normal(shift, 1, 2_000)
        ours, p = ks_against_quantiles(current, quantiles, len(reference))
        exact = stats.ks_2samp(current, reference)
        assert ours == pytest.approx(exact.statistic, abs=0.012)  # 101 quantiles: ~1% CDF
        assert (p < 0.01) == (exact.pvalue < 0.01)


def test_kolmogorov_pvalue_known_points() -> None:
    n = m = 10**6  # asymptotic regime: lambda = sqrt(n/2) * D
    assert kolmogorov_pvalue(1.36 / math.sqrt(n / 2), n, m) == pytest.approx(0.049, abs=0.002)
    assert kolmogorov_pvalue(1.63 / math.sqrt(n / 2), n, m) == pytest.approx(0.0098, abs=0.001)
    assert kolmogorov_pvalue(0.0, n, m) == 1.0


def test_prediction_drift_names_the_classes_that_moved() -> None:
    profile = reference_profile(np.zeros((10, 4)), [4], np.eye(4)[np.arange(1000) % 4] * 5.0, None)[
        "predictions"
    ]
    counts = [250, 250, 100, 400]  # class 2 lost, class 3 gained
    result = prediction_drift(
        counts, np.full(1000, 0.9), profile, ["a", "b", "c", "d"], DriftThresholds()
    )
    assert result.moved_classes == ["c", "d"]
    expected = (0.1 - 0.25) * math.log(0.1 / 0.25) + (0.4 - 0.25) * math.log(0.4 / 0.25)
    assert result.psi == pytest.approx(expected, rel=1e-4)


def blobs(n: int, seed: int, column: float = 0.5, size: tuple[int, int] = (3, 6)) -> np.ndarray:
    """n 1x16x16 images, each a bright square centred near `column` of the width."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 16, 16), dtype=np.float32) * 0.1
    for img in x:
        s = int(rng.integers(*size))
        r = int(rng.integers(3, 16 - s - 3))
        c = int(np.clip(round(column * 16 - s / 2 + rng.normal(0, 1)), 0, 16 - s))
        img[0, r : r + s, c : c + s] = 0.9
    return x


def scores(x: np.ndarray) -> np.ndarray:
    """A fake 3-class model: left, middle or right by the blob's horizontal position (about a
    third each on the reference)."""
    cols = x[:, 0].mean(axis=1)
    centre = (cols * np.arange(16)).sum(axis=1) / cols.sum(axis=1)
    logits = -((centre[:, None] - np.array([6.8, 7.5, 8.2])) ** 2)
    return logits.astype(np.float32)


def evaluate_blobs(home: Path, current: np.ndarray) -> dict[str, Any]:
    """The evaluation of `current` against the blobs' reference, as `kiln evaluate --json`
    prints it."""
    reference = blobs(2000, seed=1)
    profile = reference_profile(reference, [1, 16, 16], scores(blobs(500, seed=2)))
    ts = int((NOW - timedelta(minutes=10)).timestamp() * 1e6)
    with TrafficLogger(home, TrafficSettings(flush_interval_s=60)) as logger:
        for i, (x, s) in enumerate(zip(current, scores(current), strict=True)):
            logger.log(
                TrafficRecord(f"r{i}", ts + i, "blobs", 1, 10, input=x[None], output=s[None])
            )
    window = Window(NOW - timedelta(hours=1), NOW + timedelta(minutes=1))
    versions = {1: VersionInfo(1, ["left", "middle", "right"], profile)}
    return evaluate_traffic(home, "blobs", window, versions).to_dict()


def test_same_distribution_is_stable(tmp_path: Path) -> None:
    report = evaluate_blobs(tmp_path, blobs(400, seed=3))
    (drift,) = report["drift"]["versions"]
    assert drift["inputs"]["samples"] == 400
    assert drift["inputs"]["drifted"] == [] and drift["drift"] is False
    assert max(f["psi"] for f in drift["inputs"]["features"]) < 0.2
    assert drift["predictions"]["moved_classes"] == []


def test_moved_blobs_are_named(tmp_path: Path) -> None:
    report = evaluate_blobs(tmp_path, blobs(400, seed=3, column=0.7))
    (drift,) = report["drift"]["versions"]
    moved = set(drift["inputs"]["drifted"])
    assert "centroid_x" in moved
    # The blobs moved sideways only: same size, same height.
    assert not moved & {"ink_fraction", "bbox_width", "bbox_height", "centroid_y"}
    assert drift["predictions"]["drift"] and "right" in drift["predictions"]["moved_classes"]
    assert report["drift_detected"] is True


def test_too_few_inputs_are_not_judged(tmp_path: Path) -> None:
    report = evaluate_blobs(tmp_path, blobs(20, seed=3, column=0.8))
    (drift,) = report["drift"]["versions"]
    assert drift["inputs"]["judged"] is False and "fewer than the 100" in drift["inputs"]["note"]
    assert drift["drift"] is False


def test_samples_from_inputs_splits_requests_and_skips_misfits() -> None:
    one = np.arange(4, dtype=np.float32)  # one 2x2 sample
    two = np.arange(8, dtype=np.float32) + 10  # a request of two samples
    odd = np.arange(3, dtype=np.float32)  # fits no 2x2 shape
    flat = np.concatenate([one, odd, two])
    x, misfit = samples_from_inputs(flat, np.array([4, 3, 8]), [2, 2])
    assert misfit == 1 and x.shape == (3, 2, 2)
    assert x[0].ravel().tolist() == one.tolist() and x[2].ravel().tolist() == two[4:].tolist()
