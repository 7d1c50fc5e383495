"""Parity arithmetic and thresholds, on synthetic outputs (no model, no backend)."""

from __future__ import annotations

import numpy as np

from kiln.compile.parity import (
    THRESHOLDS,
    _batches,
    _failures,
    compare,
    random_inputs,
    run_batched,
)
from kiln_engines import Signature, TensorSpec

SIG = Signature((TensorSpec("x", "float32", (-1, 3)),), (TensorSpec("y", "float32", (-1, 4)),))


def test_identical_outputs_pass_fp32() -> None:
    ref = {"y": np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)}
    [result] = compare(ref, {"y": ref["y"].copy()})
    assert result.max_abs_diff == 0.0
    assert result.relative_error == 0.0
    assert result.top1_agreement == 1.0
    assert _failures("held-out", [result], THRESHOLDS["fp32"]) == []


def test_fp32_gates_absolute_difference_and_top1() -> None:
    ref = np.zeros((4, 4), np.float32)
    ref[:, 0] = 1.0
    got = ref.copy()
    got[0] += 2e-4  # small drift, argmax unchanged
    got[1, 3] = 5.0  # a flipped prediction
    [result] = compare({"y": ref}, {"y": got})
    assert result.top1_agreement == 0.75
    failures = _failures("held-out", [result], THRESHOLDS["fp32"])
    assert any("max abs diff" in f for f in failures)
    assert any("top-1 agreement 75.00% < 100.0%" in f for f in failures)


def test_reduced_precision_gates_top1_only() -> None:
    ref = np.eye(4, dtype=np.float32)[np.arange(1000) % 4]
    got = ref + 0.01  # large absolute drift, no flips
    [result] = compare({"y": ref}, {"y": got})
    assert _failures("held-out", [result], THRESHOLDS["fp16"]) == []
    got[:6] = np.roll(got[:6], 1, axis=1)  # 0.6% flipped: below 99.5%
    [result] = compare({"y": ref}, {"y": got})
    assert _failures("held-out", [result], THRESHOLDS["int8"])


def test_batches_exercise_the_dynamic_axis() -> None:
    sizes = [s.stop - s.start for s in _batches(100, 32)]
    assert sizes[:3] == [1, 7, 32]
    assert sum(sizes) == 100
    seen: list[int] = []
    out = run_batched(
        lambda feed: seen.append(len(feed["x"])) or {"y": feed["x"] * 2},  # type: ignore[func-returns-value]
        {"x": np.arange(20, dtype=np.float32).reshape(10, 2)},
        max_batch=4,
    )
    assert seen == [1, 4, 4, 1]
    np.testing.assert_array_equal(out["y"].ravel(), np.arange(20) * 2)


def test_random_inputs_span_the_data_range() -> None:
    like = {"x": np.array([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]], np.float32)}
    noise = random_inputs(SIG, like, 500)
    assert noise["x"].shape == (500, 3)
    assert noise["x"].dtype == np.float32
    assert noise["x"].min() >= 2.0 and noise["x"].max() <= 7.0
