"""Parity is task-aware (issue #15): a regressor's outputs get no top-1, whatever their width,
and are judged by abs diff relative to their scale and by relative error."""

from __future__ import annotations

import numpy as np

from kiln.compile.parity import REGRESSION_THRESHOLDS, THRESHOLDS, _failures, compare, random_inputs
from kiln_engines import Signature, TensorSpec


def test_regression_outputs_get_no_top1_even_when_wide() -> None:
    ref = {"embedding": np.arange(12, dtype=np.float32).reshape(4, 3)}
    assert compare(ref, ref, "classification")[0].top1_agreement == 1.0
    assert compare(ref, ref, "regression")[0].top1_agreement is None


def test_regression_abs_diff_is_relative_to_the_values_scale() -> None:
    ref = {"prediction": np.full((8, 1), 150.0, dtype=np.float32)}
    close = {"prediction": ref["prediction"] + np.float32(2e-3)}  # fp32 rounding at 150
    far = {"prediction": ref["prediction"] + np.float32(1.0)}
    fp32 = REGRESSION_THRESHOLDS["fp32"]
    assert _failures("held-out", compare(ref, close, "regression"), fp32) == []
    failures = _failures("held-out", compare(ref, far, "regression"), fp32)
    assert any("max abs diff" in f for f in failures)
    assert any("relative error" in f for f in failures)
    # A classifier's scores stay gated absolutely, as before.
    assert _failures("held-out", compare(ref, close), THRESHOLDS["fp32"]) != []


def test_random_inputs_use_a_second_length_on_dynamic_axes() -> None:
    signature = Signature(
        (TensorSpec("tokens", "int64", (-1, -1)), TensorSpec("x", "float32", (-1, 4))),
        (TensorSpec("y", "float32", (-1, 1)),),
    )
    like = {"tokens": np.zeros((3, 6), np.int64) + 5, "x": np.ones((3, 4), np.float32)}
    drawn = random_inputs(signature, like, 10)
    assert drawn["tokens"].shape == (10, 7) and drawn["x"].shape == (10, 4)
