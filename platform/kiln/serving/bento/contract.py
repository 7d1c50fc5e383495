"""What the HTTP APIs accept and return, checked per request.

BentoML validates a request body before the service instance sees it, and before adaptive
batching joins it with other requests: a shape error caught any later would fail every request
in the batch. So the check lives here, as a pydantic validator on the input annotation, and the
service updates the contract whenever the version it serves changes.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, Field


class InputContract:
    """The served model's input: one per-sample shape and dtype, -1 for free dimensions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sample_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype[Any] = np.dtype(np.float32)
        self.max_rows = 0

    def set(self, sample_shape: tuple[int, ...], dtype: np.dtype[Any], max_rows: int) -> None:
        with self._lock:
            self.sample_shape, self.dtype, self.max_rows = sample_shape, dtype, max_rows

    def expected(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.sample_shape or ())
        return f"(N, {dims}) {self.dtype.name}"

    def check(self, value: np.ndarray) -> np.ndarray:
        """Return `value` as the model's dtype, or raise ValueError naming the mismatch."""
        shape = self.sample_shape
        if shape is None:  # not loaded yet: /readyz is false, and the service checks again
            return value
        if value.dtype.kind not in "iuf":
            raise ValueError(
                f"inputs must be numbers ({self.dtype.name}); got {value.dtype.kind!r} values "
                f"of dtype {value.dtype}: send an array of shape {self.expected()}"
            )
        if value.ndim != len(shape) + 1 or any(
            want >= 0 and got != want for got, want in zip(value.shape[1:], shape, strict=False)
        ):
            hint = " (add the batch dimension: [sample])" if value.ndim == len(shape) else ""
            raise ValueError(
                f"inputs have shape {tuple(value.shape)}; this model takes {self.expected()}{hint}"
            )
        rows = value.shape[0]
        if rows == 0:
            raise ValueError(f"the batch is empty: send at least one row of {self.expected()}")
        if self.max_rows and rows > self.max_rows:
            raise ValueError(
                f"a request may carry at most {self.max_rows} rows, got {rows}; split it"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError("inputs contain NaN or infinite values")
        return np.ascontiguousarray(value, dtype=self.dtype)


CONTRACT = InputContract()

Inputs = Annotated[np.ndarray, AfterValidator(CONTRACT.check)]


class Prediction(BaseModel):
    """One row's answer."""

    request_id: str = Field(description="Quote it when sending the true label as feedback.")
    model: str
    version: int = Field(description="The model version that computed this answer.")
    prediction: int = Field(description="The index of the most likely class.")
    label: str = Field(description="The most likely class's name.")
    scores: list[float] = Field(description="Softmax probability of every class, in class order.")


class FeedbackItem(BaseModel):
    """The true label of an answered request."""

    request_id: str = Field(min_length=1)
    label: int = Field(ge=0, description="The true class index.")
    model: str = ""


class FeedbackReceipt(BaseModel):
    accepted: int
    rejected: list[dict[str, Any]] = Field(default_factory=list)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probs


def class_names_or_indices(names: list[str], count: int) -> list[str]:
    return names if len(names) == count else [str(i) for i in range(count)]
