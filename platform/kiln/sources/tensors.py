"""Tensor declarations for models Kiln did not train: `NAME:DATATYPE:SHAPE` and datatypes.

Users name datatypes as KServe v2 does (what `tritonclient` sends: FP32, INT64, ...); engine
signatures use numpy dtype names. A shape is comma-separated sizes with -1 for a dynamic
axis: `features:FP32:-1,10` is a batch of 10 features, `tokens:INT64:-1,-1` a batch of
sequences of any length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kiln.errors import InvalidArgument
from kiln_engines import DYNAMIC, TensorSpec

# KServe v2 datatype -> numpy dtype name; BYTES (strings) and BF16 have no engine dtype here.
KSERVE_TO_NUMPY = dict(
    zip(
        ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
        ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"),
        strict=True,
    )
) | {"FP16": "float16", "FP32": "float32", "FP64": "float64"}
NUMPY_TO_KSERVE = {v: k for k, v in KSERVE_TO_NUMPY.items()}

EXAMPLE = "--input features:FP32:-1,10"


def kserve_datatype(dtype: str) -> str:
    """The KServe name of a numpy dtype name ("float32" -> "FP32")."""
    return NUMPY_TO_KSERVE.get(np.dtype(dtype).name, dtype)


def parse_input(text: str) -> TensorSpec:
    """One `--input NAME:DATATYPE:SHAPE` declaration; `InvalidArgument` says what is wrong."""
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise InvalidArgument(
            f"--input '{text}' is not NAME:DATATYPE:SHAPE; e.g. {EXAMPLE} (a batch of 10 "
            "features) or --input ids:INT64:-1,4"
        )
    name, datatype, shape_text = parts
    dtype = KSERVE_TO_NUMPY.get(datatype.upper())
    if dtype is None:
        raise InvalidArgument(
            f"--input '{text}': unknown datatype '{datatype}'; datatypes: "
            f"{', '.join(KSERVE_TO_NUMPY)}"
        )
    try:
        shape = tuple(int(d) for d in shape_text.split(","))
    except ValueError:
        raise InvalidArgument(
            f"--input '{text}': shape '{shape_text}' must be comma-separated integers, -1 for "
            f"a dynamic axis; e.g. {EXAMPLE}"
        ) from None
    try:
        return TensorSpec(name, dtype, shape)
    except ValueError as exc:
        raise InvalidArgument(f"--input '{text}': {exc}") from exc


def parse_inputs(texts: Sequence[str]) -> tuple[TensorSpec, ...]:
    specs = tuple(parse_input(t) for t in texts)
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidArgument(f"--input names must be unique; repeated: {', '.join(repeated)}")
    return specs


def concrete_shape(spec: TensorSpec, batch: int, length: int) -> tuple[int, ...]:
    """`spec`'s shape with the batch axis (a leading -1) set to `batch` and every other
    dynamic axis to `length`."""
    return tuple(
        (batch if axis == 0 else length) if size == DYNAMIC else size
        for axis, size in enumerate(spec.shape)
    )


def zeros(specs: Sequence[TensorSpec], batch: int, length: int) -> dict[str, np.ndarray]:
    """All-zero inputs of the declared shapes: a valid index for embeddings, a valid value
    for any numeric input."""
    return {s.name: np.zeros(concrete_shape(s, batch, length), dtype=s.dtype) for s in specs}


def parse_ranges(
    texts: Sequence[str], specs: Sequence[TensorSpec]
) -> dict[str, tuple[float, float]]:
    """`--input-range NAME=LOW:HIGH` declarations (inclusive; integers for integer inputs),
    checked against the declared or found inputs `specs`."""
    by_name = {s.name: s for s in specs}
    ranges: dict[str, tuple[float, float]] = {}
    for text in texts:
        name, _, bounds = text.partition("=")
        low_text, _, high_text = bounds.partition(":")
        spec = by_name.get(name)
        if spec is None:
            raise InvalidArgument(
                f"--input-range '{text}': the model has no input '{name}'; inputs: "
                f"{', '.join(by_name) or '(none)'}"
            )
        integer = np.dtype(spec.dtype).kind in "iub"
        try:
            low, high = (int(v) if integer else float(v) for v in (low_text, high_text))
        except ValueError:
            kind = "integers" if integer else "numbers"
            raise InvalidArgument(
                f"--input-range '{text}' is not NAME=LOW:HIGH with {kind}; e.g. "
                "--input-range ids=0:19 (ids 0 to 19, both included)"
            ) from None
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise InvalidArgument(f"--input-range '{text}': LOW must be <= HIGH, both finite")
        ranges[name] = (low, high)
    return ranges


def random_like(
    specs: Sequence[TensorSpec],
    count: int,
    length: int,
    seed: int,
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, np.ndarray]:
    """`count` random samples per input, uniform over `ranges[name]` (inclusive) where given;
    otherwise floats standard normal, integers in 0..9 (valid ids for any embedding of at
    least 10 rows), booleans fair coins. Dynamic non-batch axes get `length`."""
    rng = np.random.default_rng(seed)
    ranges = ranges or {}
    out = {}
    for spec in specs:
        shape = concrete_shape(spec, count, length)
        kind = np.dtype(spec.dtype).kind
        bounds = ranges.get(spec.name)
        data: np.ndarray
        if kind == "b":
            data = rng.random(shape) < 0.5
        elif kind == "f":
            data = (
                rng.uniform(bounds[0], bounds[1], size=shape)
                if bounds is not None
                else rng.standard_normal(shape)
            )
        else:
            low, high = (int(bounds[0]), int(bounds[1])) if bounds is not None else (0, 9)
            data = rng.integers(low, high + 1, size=shape)
        out[spec.name] = np.ascontiguousarray(data, dtype=spec.dtype)
    return out
