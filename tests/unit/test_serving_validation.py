"""`RequestValidator`: one request checked against the model that will serve it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from kiln.errors import InferRequestInvalid
from kiln.serving import codec
from kiln.serving.messages import TensorSpec
from kiln.serving.validation import RequestValidator


def validator(datatype: str, *, allow_nonfinite: bool = False) -> RequestValidator:
    spec = TensorSpec("x", datatype, (-1, 3), codec.numpy_dtype(datatype))
    out = TensorSpec("y", "FP32", (-1, 2), np.dtype("<f4"))
    return RequestValidator("m:1", (spec,), (out,), 8, allow_nonfinite=allow_nonfinite)


FLOATS = ["FP16", "FP32", "FP64", "BF16"]


@pytest.mark.parametrize("datatype", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_naming_the_input(datatype: str, value: float) -> None:
    x = np.array([[0.0, 1.0, 2.0], [3.0, value, 5.0]]).astype(codec.numpy_dtype(datatype))
    with pytest.raises(InferRequestInvalid, match="input 'x' holds NaN or infinite values"):
        validator(datatype)({"x": x}, ())
    assert validator(datatype, allow_nonfinite=True)({"x": x}, ()) == 2


@pytest.mark.parametrize("datatype", [*FLOATS, "INT32", "UINT8", "BOOL"])
def test_finite_and_integer_inputs_pass(datatype: str) -> None:
    x = np.ones((4, 3)).astype(codec.numpy_dtype(datatype))
    assert validator(datatype)({"x": x}, ()) == 4


def test_the_largest_finite_values_are_finite() -> None:
    x = np.full((1, 3), np.finfo(np.float32).max, np.float32)
    assert validator("FP32")({"x": x}, ()) == 1  # a sum would overflow; isfinite does not


def test_client_chosen_names_are_quoted_and_only_a_few_listed() -> None:
    inputs: dict[str, Any] = {
        f"in\x00{i}" + "z" * 200: np.ones((1, 3), np.float32) for i in range(500)
    }
    with pytest.raises(InferRequestInvalid) as err:
        validator("FP32")(inputs, ())
    message = err.value.message
    assert "\x00" not in message and len(message) < 1000 and "and 495 more" in message
    with pytest.raises(InferRequestInvalid) as err:
        validator("FP32")({"x": np.ones((1, 3), np.float32)}, ("\u202e" + "o" * 5000,))
    assert "\u202e" not in err.value.message and len(err.value.message) < 300
