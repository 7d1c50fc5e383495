"""What an engine takes and returns, and the one check every input passes before a backend.

A `Signature` names each input and output tensor with a numpy dtype string ("float32") and a
shape in which -1 marks a dynamic dimension (the batch axis, usually). `InputValidator` is built
once per engine and runs on every request, so it does the minimum: it compares against
precomputed dtypes and fixed sizes and builds a message only when something is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from kiln_engines.errors import EngineInputError

DYNAMIC = -1
"""The size of a dimension that may vary between calls."""

SIGNATURE_METADATA_KEY = "kiln.signature"
"""Where a compiled artifact carries its signature as JSON: ONNX `metadata_props`, the
AOTInductor package metadata. Kiln's compile stage writes it; the backends read it."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor: numpy dtype string and shape, -1 for a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tensor needs a name")
        try:
            canonical = np.dtype(self.dtype).name
        except TypeError as exc:
            raise ValueError(
                f"tensor '{self.name}': unknown dtype {self.dtype!r}; use a numpy dtype name "
                "such as 'float32' or 'int64'"
            ) from exc
        object.__setattr__(self, "dtype", canonical)
        shape = tuple(int(d) for d in self.shape)
        if any(d < DYNAMIC or d == 0 for d in shape):
            raise ValueError(
                f"tensor '{self.name}': shape {list(shape)} may hold only positive sizes "
                "or -1 for a dynamic dimension"
            )
        object.__setattr__(self, "shape", shape)

    def describe(self) -> str:
        dims = ",".join("N" if d == DYNAMIC else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=tuple(data["shape"]))


@dataclass(frozen=True, slots=True)
class Signature:
    """An engine's inputs and outputs, in the order the model takes and returns them.

    `max_batch` is the largest size a dynamic leading axis may take (None: unbounded), which a
    TensorRT optimisation profile or a serving batcher needs to know.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not self.inputs or not self.outputs:
            raise ValueError("a signature needs at least one input and one output")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tensor names must be unique; repeated: {', '.join(dupes)}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def describe(self) -> str:
        """One line for messages: ``input: float32[N,1,28,28] -> logits: float32[N,10]``."""
        ins = ", ".join(t.describe() for t in self.inputs)
        outs = ", ".join(t.describe() for t in self.outputs)
        batch = f" (N <= {self.max_batch})" if self.max_batch is not None else ""
        return f"{ins} -> {outs}{batch}"

    def with_max_batch(self, max_batch: int | None) -> Signature:
        return Signature(self.inputs, self.outputs, max_batch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "max_batch": self.max_batch,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            max_batch=data.get("max_batch"),
        )


class InputValidator:
    """Checks a request against a signature; raises `EngineInputError` naming what to send.

    Built once per engine. A call returns the batch size (the shared size of the leading
    dynamic axis; 1 when no input has one).
    """

    __slots__ = ("_checks", "_max_batch", "_names", "_signature")

    def __init__(self, signature: Signature) -> None:
        self._signature = signature
        self._names = frozenset(signature.input_names)
        self._max_batch = signature.max_batch
        # (name, dtype, rank, fixed (axis, size) pairs, leading axis is dynamic)
        self._checks = tuple(
            (
                spec.name,
                np.dtype(spec.dtype),
                len(spec.shape),
                tuple((axis, size) for axis, size in enumerate(spec.shape) if size != DYNAMIC),
                bool(spec.shape) and spec.shape[0] == DYNAMIC,
            )
            for spec in signature.inputs
        )

    def __call__(self, inputs: Mapping[str, Any]) -> int:  # noqa: PLR0912
        if len(inputs) != len(self._checks):
            self._fail_names(inputs)
        batch = -1
        for name, dtype, rank, fixed, batched in self._checks:
            array = inputs.get(name)
            if array is None:
                self._fail_names(inputs)
            if not isinstance(array, np.ndarray):
                self._fail(f"input '{name}' must be a numpy array, got {type(array).__name__}")
            if array.dtype != dtype:
                self._fail(f"input '{name}' has dtype {array.dtype}, expected {dtype}")
            shape = array.shape
            if len(shape) != rank:
                self._fail(
                    f"input '{name}' has rank {len(shape)} (shape {list(shape)}), expected {rank}"
                )
            for axis, size in fixed:
                if shape[axis] != size:
                    self._fail(
                        f"input '{name}' has size {shape[axis]} on axis {axis} "
                        f"(shape {list(shape)}), expected {size}"
                    )
            if array.size == 0:
                self._fail(f"input '{name}' is empty (shape {list(shape)})")
            if batched:
                if batch == -1:
                    batch = shape[0]
                elif shape[0] != batch:
                    self._fail(
                        f"inputs disagree on the batch size: '{name}' has {shape[0]}, "
                        f"an earlier input has {batch}"
                    )
        if batch == -1:
            return 1
        if self._max_batch is not None and batch > self._max_batch:
            self._fail(
                f"batch size {batch} exceeds this engine's maximum of {self._max_batch}; "
                "split the request"
            )
        return batch

    def _fail_names(self, inputs: Mapping[str, Any]) -> NoReturn:
        given = set(inputs)
        missing = sorted(self._names - given)
        unexpected = sorted(given - self._names)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(repr(n) for n in missing)}")
        if unexpected:
            parts.append(f"unexpected {', '.join(repr(str(n)) for n in unexpected)}")
        self._fail("wrong input names: " + "; ".join(parts))

    def _fail(self, problem: str) -> NoReturn:
        raise EngineInputError(f"{problem}. This engine takes {self._signature.describe()}")
