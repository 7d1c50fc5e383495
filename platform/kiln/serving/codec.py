"""KServe v2 tensors ⇄ numpy arrays, with no transport in sight.

The Open Inference Protocol names element types by strings (`FP32`, `BYTES`, …) and carries
tensor data either as raw little-endian bytes in row-major order or as typed lists. BYTES
tensors are raw too: each element is a 4-byte little-endian length followed by that many
bytes. Decoding is zero-copy for numeric raw data (`np.frombuffer`), so arrays decoded from a
request are read-only views of the request's bytes.

Every decoding error is `InferRequestInvalid` with a message naming the tensor (quoted: names
come from clients) and the problem; numpy never sees a shape it would refuse with ValueError.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kiln.errors import InferRequestInvalid, quote

BYTES: Final = "BYTES"
BF16: Final = "BF16"

# Explicit little-endian dtypes: the protocol's byte order, whatever the host's.
_NUMERIC: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

_BY_DTYPE: Final[dict[np.dtype[Any], str]] = {dtype: name for name, dtype in _NUMERIC.items()}

DATATYPES: Final[tuple[str, ...]] = (*_NUMERIC, BF16, BYTES)
"""Every KServe v2 datatype, in the specification's order."""

_LENGTH = struct.Struct("<I")
_OBJECT = np.dtype(object)

MAX_RANK: Final = 32
"""Most dimensions a request's tensor may have: numpy 1's limit (numpy 2 allows 64); no model
comes near it."""
_MAX_EXTENT: Final = 2**48
"""Largest product of a tensor's non-zero dimensions: numpy refuses shapes whose size times
the item size overflows, even when a zero dimension makes them empty."""


def _bfloat16() -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError:
        raise InferRequestInvalid(
            "BF16 tensors need the ml_dtypes package on the server (pip install ml_dtypes); "
            "send FP32 instead"
        ) from None
    bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return bfloat16


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a KServe datatype (object for BYTES); raises for unknown names."""
    dtype = _NUMERIC.get(datatype)
    if dtype is not None:
        return dtype
    if datatype == BYTES:
        return _OBJECT
    if datatype == BF16:
        return _bfloat16()
    raise InferRequestInvalid(
        f"unknown datatype {quote(datatype)}; datatypes: {', '.join(DATATYPES)}"
    )


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The KServe datatype of a numpy dtype; raises ValueError for dtypes KServe cannot carry."""
    name = _BY_DTYPE.get(dtype)  # the common case: one hash lookup
    if name is not None:
        return name
    if dtype.kind in "OSU":
        return BYTES
    if dtype.name == "bfloat16":
        return BF16
    if dtype.byteorder == ">":
        return datatype_of(dtype.newbyteorder("<"))
    raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype")


def element_count(name: str, shape: Sequence[int]) -> int:
    """The number of elements of a tensor of `shape`; raises for shapes no array can have:
    negative dimensions, more than `MAX_RANK` of them, or an empty tensor whose other
    dimensions are too large for numpy."""
    if len(shape) > MAX_RANK:
        raise InferRequestInvalid(
            f"input {quote(name)} has {len(shape)} dimensions; tensors have at most {MAX_RANK} "
            "(send the shape the model's metadata lists)"
        )
    for dim in shape:
        if dim < 0:
            raise InferRequestInvalid(
                f"input {quote(name)} has shape {list(shape)}: dimensions must be >= 0 "
                "(-1 is only for model metadata, not requests)"
            )
    count = math.prod(shape)
    if count == 0 and math.prod(d for d in shape if d) > _MAX_EXTENT:
        raise InferRequestInvalid(
            f"input {quote(name)} is empty (shape {list(shape)}) and its other dimensions are "
            "too large for any tensor; send at least one row, of the shape the model takes"
        )
    return count


_RAW_LAYOUTS: dict[tuple[str, tuple[int, ...]], tuple[np.dtype[Any], int]] = {}
"""(datatype, shape) of numeric raw tensors decoded before -> (dtype, byte length): a tensor
like an earlier one skips the datatype lookup and the shape checks, made the first time."""
_RAW_LAYOUT_LIMIT: Final = 4096


def decode_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview
) -> npt.NDArray[Any]:
    """The array `raw` holds for a tensor of `datatype` and `shape` (zero-copy when numeric)."""
    shape = tuple(shape)
    known = _RAW_LAYOUTS.get((datatype, shape))
    if known is not None and len(raw) == known[1]:  # the hot path: a layout seen before
        # One call instead of frombuffer + reshape (half the cost); a view, read-only over bytes.
        return np.ndarray(shape, known[0], raw)
    dtype = _NUMERIC.get(datatype)
    count = element_count(name, shape)
    if dtype is None:
        if datatype == BYTES:
            return decode_bytes(name, shape, count, raw)
        dtype = numpy_dtype(datatype)  # BF16, or raises for unknown names
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InferRequestInvalid(
            f"input {quote(name)}: shape {list(shape)} of {datatype} needs {expected} bytes "
            f"({count} elements x {dtype.itemsize}), but its raw contents hold {len(raw)}"
        )
    if len(_RAW_LAYOUTS) < _RAW_LAYOUT_LIMIT:
        _RAW_LAYOUTS[(datatype, shape)] = (dtype, expected)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_bytes(
    name: str, shape: Sequence[int], count: int, raw: bytes | memoryview
) -> npt.NDArray[Any]:
    """Parse `count` length-prefixed BYTES elements from `raw` into an object array."""
    elements: list[bytes] = []
    view = memoryview(raw)
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InferRequestInvalid(
                f"input {quote(name)}: BYTES contents end inside a 4-byte length prefix "
                f"(element {len(elements)}, byte {offset} of {end})"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InferRequestInvalid(
                f"input {quote(name)}: BYTES element {len(elements)} declares {length} bytes but "
                f"only {end - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InferRequestInvalid(
            f"input {quote(name)}: shape {list(shape)} needs {count} BYTES elements, "
            f"but its contents hold {len(elements)}"
        )
    array = np.empty(count, dtype=_OBJECT)
    array[:] = elements
    return array.reshape(shape)


def decode_typed(
    name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]
) -> npt.NDArray[Any]:
    """The array of a tensor sent as a typed list of elements (row-major)."""
    count = element_count(name, shape)
    if datatype in ("FP16", BF16):
        raise InferRequestInvalid(
            f"input {quote(name)}: {datatype} has no typed contents in KServe v2; send it as raw "
            "bytes (raw_input_contents)"
        )
    dtype = numpy_dtype(datatype)
    if len(values) != count:
        raise InferRequestInvalid(
            f"input {quote(name)}: shape {list(shape)} needs {count} elements, but its typed "
            f"contents hold {len(values)}"
        )
    if dtype is _OBJECT:
        array = np.empty(count, dtype=_OBJECT)
        array[:] = [bytes(v) for v in values]
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError:
        info = np.iinfo(dtype)
        raise InferRequestInvalid(
            f"input {quote(name)}: a value is out of range for {datatype} ({info.min}..{info.max})"
        ) from None


def encode_raw(array: npt.NDArray[Any]) -> bytes:
    """Raw little-endian row-major bytes of `array` (length-prefixed elements for BYTES)."""
    if array.dtype.kind in "OSU":
        return encode_bytes(array.reshape(-1))
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # C order, one copy into the message


def encode_bytes(elements: Iterable[Any]) -> bytes:
    """Length-prefix each element (bytes, or str encoded as UTF-8) and join them."""
    parts: list[bytes] = []
    for element in elements:
        data = element.encode() if isinstance(element, str) else bytes(element)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)
