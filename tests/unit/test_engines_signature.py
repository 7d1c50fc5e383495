"""Signature and input validation: every wrong request is refused with the expected signature."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln_engines import EngineInputError, InputValidator, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("input", "float32", (-1, 1, 28, 28)),),
    outputs=(TensorSpec("logits", "float32", (-1, 10)),),
    max_batch=64,
)
TWO = Signature(
    inputs=(TensorSpec("a", "float32", (-1, 3)), TensorSpec("b", "int64", (-1,))),
    outputs=(TensorSpec("y", "float32", (-1, 2)),),
)


def check(sig: Signature, inputs: dict[str, object]) -> EngineInputError:
    with pytest.raises(EngineInputError) as err:
        InputValidator(sig)(inputs)  # type: ignore[arg-type]
    assert err.value.code == "invalid_argument"
    assert sig.describe() in err.value.message
    return err.value


def test_valid_input_returns_batch_size() -> None:
    assert InputValidator(SIG)({"input": np.zeros((5, 1, 28, 28), np.float32)}) == 5
    assert InputValidator(TWO)({"a": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.int64)}) == 2


def test_describe_is_readable() -> None:
    assert SIG.describe() == "input: float32[N,1,28,28] -> logits: float32[N,10] (N <= 64)"


def test_wrong_name() -> None:
    err = check(SIG, {"image": np.zeros((1, 1, 28, 28), np.float32)})
    assert "missing 'input'" in err.message
    assert "unexpected 'image'" in err.message


def test_extra_input() -> None:
    x = np.zeros((1, 1, 28, 28), np.float32)
    assert "unexpected 'extra'" in check(SIG, {"input": x, "extra": x}).message


def test_wrong_dtype() -> None:
    err = check(SIG, {"input": np.zeros((1, 1, 28, 28), np.float64)})
    assert "dtype float64, expected float32" in err.message


def test_wrong_rank() -> None:
    assert "rank 3" in check(SIG, {"input": np.zeros((1, 28, 28), np.float32)}).message


def test_wrong_size() -> None:
    err = check(SIG, {"input": np.zeros((1, 1, 28, 27), np.float32)})
    assert "size 27 on axis 3" in err.message


def test_not_an_array() -> None:
    assert "numpy array" in check(SIG, {"input": [[0.0]]}).message


def test_empty_batch() -> None:
    assert "empty" in check(SIG, {"input": np.zeros((0, 1, 28, 28), np.float32)}).message


def test_batch_over_maximum() -> None:
    err = check(SIG, {"input": np.zeros((65, 1, 28, 28), np.float32)})
    assert "exceeds this engine's maximum of 64" in err.message


def test_inputs_disagree_on_batch() -> None:
    err = check(TWO, {"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.int64)})
    assert "disagree on the batch size" in err.message


def test_round_trip_and_canonical_dtype() -> None:
    spec = TensorSpec("x", "f4", [-1, 3])  # type: ignore[arg-type]
    assert spec.dtype == "float32"
    assert spec.shape == (-1, 3)
    assert Signature.from_dict(SIG.to_dict()) == SIG


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "dtype": "floaty", "shape": (1,)}, "unknown dtype"),
        ({"name": "x", "dtype": "float32", "shape": (0,)}, "positive sizes"),
        ({"name": "", "dtype": "float32", "shape": (1,)}, "needs a name"),
    ],
)
def test_bad_specs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorSpec(**kwargs)  # type: ignore[arg-type]


def test_duplicate_names() -> None:
    spec = TensorSpec("x", "float32", (1,))
    with pytest.raises(ValueError, match="unique"):
        Signature((spec,), (spec,))


@given(
    batch=st.integers(1, 64),
    dims=st.lists(st.integers(1, 5), min_size=0, max_size=3),
)
def test_any_conforming_array_passes(batch: int, dims: list[int]) -> None:
    sig = Signature(
        (TensorSpec("x", "float32", (-1, *dims)),), (TensorSpec("y", "float32", (-1,)),)
    )
    assert InputValidator(sig)({"x": np.ones((batch, *dims), np.float32)}) == batch
