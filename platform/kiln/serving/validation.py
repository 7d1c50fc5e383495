"""Checking one request against the model that will serve it, before it joins a batch.

A bad request must fail alone: if it reached the engine inside a batch, every request batched
with it would fail too. The check runs on the event loop for every request, so it is built
once per loaded version, compares against precomputed values, and formats a message only when
something is wrong. Messages use KServe datatype names and say what the model expects; names a
client chose are quoted (`kiln.errors.quote`) and only a few of them listed.

Non-finite values: a floating-point input holding NaN or an infinity is refused (the model's
answer to it means nothing, and its traffic row would poison drift and retraining) unless the
server allows them (`ServingSettings.allow_nonfinite`). One vectorised `isfinite` per float
input costs ~4 us for a 1x28x28 FP32 image, mostly fixed cost: ~6 us for 32 of them. So with
`defer_finite` the check moves to the batcher (`kiln.serving.batcher.BatchScreen`): one pass
over each batch's joined inputs, and only a batch that fails it is checked request by request,
the requests holding bad values failing alone with the same message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from kiln.errors import InferRequestInvalid, quote
from kiln.serving.codec import datatype_of
from kiln.serving.messages import TensorSpec

DYNAMIC = -1
Validator = Callable[[Mapping[str, npt.NDArray[Any]], tuple[str, ...]], int]
"""A loaded version's check of one request (inputs, requested outputs): returns its rows,
raises `InferRequestInvalid`. A `RequestValidator`, or a text model's `TextStage.check`."""
_LISTED = 5  # names a message lists before "and N more"


class RequestValidator:
    """Validates a request's inputs and requested outputs; returns its row count.

    With `max_batch_size` > 0 every input's first dimension is the batch dimension: it must be
    1..max_batch_size and the same across inputs. With 0 the model takes whole tensors and a
    request counts as one row. Floating-point inputs must be finite unless `allow_nonfinite`.
    """

    __slots__ = ("_checks", "_deferred", "_finite", "_inputs", "_label", "_max_batch", "_outputs")

    def __init__(
        self,
        label: str,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        max_batch_size: int,
        *,
        allow_nonfinite: bool = False,
        defer_finite: bool = False,
    ) -> None:
        self._label = label
        self._inputs = inputs
        self._outputs = frozenset(o.name for o in outputs)
        self._max_batch = max_batch_size
        self._checks = tuple(
            (
                spec.name,
                spec.dtype,
                len(spec.shape),
                tuple((axis, size) for axis, size in enumerate(spec.shape) if size != DYNAMIC),
                not allow_nonfinite and not defer_finite and _is_float(spec.dtype),
            )
            for spec in inputs
        )
        self._finite = tuple(
            spec.name for spec in inputs if not allow_nonfinite and _is_float(spec.dtype)
        )
        """Float inputs that must hold finite values."""
        self._deferred = defer_finite and bool(self._finite)

    @property
    def screen(self) -> RequestValidator | None:
        """This validator as the batcher's `BatchScreen` when its finite checks were deferred
        to batches (`defer_finite`) and any input needs them; None otherwise."""
        return self if self._deferred else None

    def all_finite(self, feed: Mapping[str, npt.NDArray[Any]]) -> bool:
        """Whether every float input of a batch's joined inputs is finite."""
        return all(_isfinite(feed[name]).all() for name in self._finite)

    def check_finite(self, inputs: Mapping[str, npt.NDArray[Any]]) -> None:
        """Refuse one request's non-finite float input, naming it."""
        for name in self._finite:
            if not _isfinite(inputs[name]).all():
                self._nonfinite(name)

    def __call__(self, inputs: Mapping[str, npt.NDArray[Any]], outputs: tuple[str, ...]) -> int:
        if len(inputs) != len(self._checks):
            self._wrong_names(inputs)
        rows = -1
        for name, dtype, rank, fixed, finite in self._checks:
            array = inputs.get(name)
            if array is None:
                self._wrong_names(inputs)
            if array.dtype != dtype:
                # Strings sent to a model without a tokenizer: say so, not just "BYTES".
                hint = (
                    "; it takes no strings (it is not a text model)"
                    if array.dtype == _OBJECT and dtype != _OBJECT
                    else ""
                )
                self._fail(
                    f"input '{name}' has datatype {_datatype(array)}, but the model expects "
                    f"{datatype_name(dtype)}{hint}"
                )
            shape = array.shape
            if len(shape) != rank or any(shape[axis] != size for axis, size in fixed):
                self._fail(
                    f"input '{name}' has shape {list(shape)}, but the model expects "
                    f"{self._expected(name)}"
                )
            if array.size == 0:
                self._fail(f"input '{name}' is empty (shape {list(shape)}); send at least one row")
            if finite and not _isfinite(array).all():
                self._nonfinite(name)
            if self._max_batch:
                if rows == -1:
                    rows = shape[0]
                elif shape[0] != rows:
                    self._fail(
                        f"inputs disagree on the batch size: input '{name}' has {shape[0]} rows, "
                        f"an earlier input has {rows}"
                    )
        if self._max_batch and rows > self._max_batch:
            self._fail(
                f"batch of {rows} rows exceeds the model's max_batch_size {self._max_batch}; "
                "split the request"
            )
        if outputs:
            self.check_outputs(outputs)
        return rows if self._max_batch else 1

    def check_outputs(self, outputs: tuple[str, ...]) -> None:
        """Refuse unknown or repeated output names."""
        unknown = [o for o in outputs if o not in self._outputs]
        if unknown:
            self._fail(
                f"unknown output {names(unknown)}; the model's outputs: "
                f"{', '.join(sorted(self._outputs))}"
            )
        if len(set(outputs)) != len(outputs):
            repeated = sorted({o for o in outputs if outputs.count(o) > 1})
            self._fail(f"output {names(repeated)} requested more than once")

    def _expected(self, name: str) -> str:
        spec = next(s for s in self._inputs if s.name == name)
        return f"[{', '.join('-1' if d == DYNAMIC else str(d) for d in spec.shape)}] (-1: any size)"

    def _wrong_names(self, inputs: Mapping[str, Any]) -> NoReturn:
        expected = {spec.name for spec in self._inputs}
        missing = sorted(expected - set(inputs))
        unexpected = sorted(set(inputs) - expected)
        parts = []
        if missing:
            parts.append(f"missing input {names(missing)}")
        if unexpected:
            parts.append(f"unexpected input {names(unexpected)}")
        self._fail(f"{'; '.join(parts)}; the model's inputs: {', '.join(sorted(expected))}")

    def _nonfinite(self, name: str) -> NoReturn:
        self._fail(
            f"input '{name}' holds NaN or infinite values; send finite numbers (a server "
            "started with KILN_SERVE_ALLOW_NONFINITE=true accepts them)"
        )

    def _fail(self, problem: str) -> NoReturn:
        raise InferRequestInvalid(f"model {self._label}: {problem}")


_isfinite = np.isfinite
_OBJECT = np.dtype(object)


def _is_float(dtype: np.dtype[Any]) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def names(chosen: Iterable[str]) -> str:
    """Client-chosen names for a message: quoted, the first few of them."""
    listed = list(chosen)
    shown = ", ".join(quote(n) for n in listed[:_LISTED])
    return f"{shown} and {len(listed) - _LISTED} more" if len(listed) > _LISTED else shown


def _datatype(array: npt.NDArray[Any]) -> str:
    return datatype_name(array.dtype)


def datatype_name(dtype: Any) -> str:
    """The KServe datatype of `dtype` for a message (its numpy name when KServe has none)."""
    try:
        return datatype_of(dtype)
    except ValueError:
        return str(dtype)
