"""What the HTTP APIs accept and return, checked per request.

BentoML validates a request body before the service instance sees it, and before adaptive
batching joins it with other requests: a shape error caught any later would fail every request
in the batch. So the check lives here, as a pydantic validator on the input annotation, and the
service updates the contract whenever the version it serves changes. After converting the JSON
numbers to the model's dtype it runs the serving core's own request check (the one gRPC
requests get), so both transports refuse the same requests with the same messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, Field

from kiln.errors import KilnError, quote

RequestCheck = Callable[[Mapping[str, np.ndarray], tuple[str, ...]], int]
"""The serving core's check of one request (`RequestValidator`): raises a `KilnError`."""

MAX_VERSION_DIGITS = 19
"""Versions are int64s in the registry: a longer version string cannot name one."""


def one_input_only(model: str, inputs: Sequence[str]) -> str:
    """Why the service cannot answer a model with several inputs, and what serves it."""
    return (
        f"'{model}' takes {len(inputs)} inputs ({', '.join(inputs)}); the BentoML service "
        "takes one input array per request (adaptive batching joins requests along that "
        "array's first axis): serve this model with kiln serve (KServe v2 gRPC), which takes "
        "every input by name"
    )


class InputContract:
    """The served model's input: one per-sample shape and dtype, -1 for free dimensions.

    A model with several inputs cannot be answered here (see `one_input_only`): the
    contract then refuses every request with that reason, before batching.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sample_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype[Any] = np.dtype(np.float32)
        self.max_rows = 0
        self.core_check: tuple[str, RequestCheck] | None = None
        """The input's name and the core's check of the served version."""
        self.refusal: str | None = None
        """Why no request can be answered (the served model has several inputs)."""

    def set(
        self,
        sample_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        max_rows: int,
        input_name: str = "",
        core_check: RequestCheck | None = None,
    ) -> None:
        with self._lock:
            self.sample_shape, self.dtype, self.max_rows = sample_shape, dtype, max_rows
            self.core_check = (input_name, core_check) if core_check is not None else None
            self.refusal = None

    def refuse(self, reason: str) -> None:
        """Refuse every request with `reason` until `set` describes a servable model."""
        with self._lock:
            self.refusal = reason

    def expected(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.sample_shape or ())
        return f"(N, {dims}) {self.dtype.name}"

    def check(self, value: np.ndarray) -> np.ndarray:
        """Return `value` as the model's dtype, or raise ValueError naming the mismatch."""
        if self.refusal is not None:
            raise ValueError(self.refusal)
        shape = self.sample_shape
        if shape is None:  # not loaded yet: /readyz is false, and the service checks again
            return value
        if value.dtype == object:
            value = self._numbers(value)
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
        converted = np.ascontiguousarray(value, dtype=self.dtype)
        core_check = self.core_check
        if core_check is not None:
            name, check = core_check
            try:
                check({name: converted}, ())
            except KilnError as exc:  # pydantic turns ValueErrors into 400s naming the field
                raise ValueError(exc.message) from exc
        return converted

    def _numbers(self, value: np.ndarray) -> np.ndarray:
        """An object array (JSON integers beyond int64 make one) as numbers, if it is numbers."""
        try:
            return value.astype(np.float64 if self.dtype.kind == "f" else self.dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"inputs must be numbers ({self.dtype.name}) that fit it, in an array of shape "
                f"{self.expected()}"
            ) from exc


CONTRACT = InputContract()

Inputs = Annotated[np.ndarray, AfterValidator(CONTRACT.check)]


def check_version(version: str) -> str:
    """A request's version string, refused when no version could have it (too long to parse:
    Python's int() stops at 4,300 digits, and versions are int64s)."""
    if len(version) > MAX_VERSION_DIGITS:
        raise ValueError(
            f"version {quote(version, 24)} is not a version number: versions are integers of "
            f"at most {MAX_VERSION_DIGITS} digits (or empty for the default version)"
        )
    return version


VersionField = Annotated[str, AfterValidator(check_version)]


class Prediction(BaseModel):
    """One row's answer."""

    request_id: str = Field(description="Quote it when sending the true label as feedback.")
    model: str
    version: int = Field(description="The model version that computed this answer.")
    prediction: int = Field(description="The index of the most likely class.")
    label: str = Field(description="The most likely class's name.")
    scores: list[float] = Field(description="Softmax probability of every class, in class order.")


class Estimate(BaseModel):
    """One row's answer from a regression model."""

    request_id: str = Field(description="Quote it when sending the true value as feedback.")
    model: str
    version: int = Field(description="The model version that computed this answer.")
    output: str = Field(description="The model output the values come from.")
    prediction: list[float] = Field(
        description="The row's predicted value(s), flattened: one per target ([151.2] for a "
        "model predicting one value)."
    )


Answer = Prediction | Estimate
"""One row's answer: class-style for a classification model, values for a regression one."""


class FeedbackItem(BaseModel):
    """The true label (a classification model) or value (a regression model) of an answered
    request.

    Only the types are checked here; whether the id is empty, exactly one of label and value
    given, the label one of the model's classes and the value finite is the serving core's
    check, per item, so that one bad item is refused in the receipt instead of failing the
    items sent with it.
    """

    request_id: str = Field(description="The request_id of the answer being labelled.")
    label: int | None = Field(
        default=None,
        description="The true class index (classification): 0 to the model's classes - 1.",
    )
    value: float | None = Field(
        default=None, description="The true target (regression): a finite number."
    )
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
