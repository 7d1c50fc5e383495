"""ModelInferResponse written straight to protobuf wire bytes: the hot path's one message.

Building a `ModelInferResponse` object and serialising it costs several microseconds of
Python per request, and on a busy 2-core host every microsecond of Python on the event loop
shows up about three times over (cold caches, a client sharing the cores). Everything in a
response but the request id, the batch dimension and the output bytes is the same from one
request to the next, so `ResponseEncoder` encodes those parts once per (model, version) and
per output (name, dtype, shape) and joins cached pieces with the per-request ones.

The bytes are exactly what protobuf's serializer produces for the same message (fields in
field-number order, proto3 defaults omitted, packed shape); `tests/unit/test_serving_wire.py`
holds the encoder to that, byte for byte, and parses the result back with the generated class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kiln.serving import codec
from kiln.serving.messages import InferResponse

# Field tags (field number << 3 | wire type 2, length-delimited) of ModelInferResponse...
_MODEL_NAME, _MODEL_VERSION, _ID, _OUTPUTS, _RAW = b"\x0a", b"\x12", b"\x1a", b"\x2a", b"\x32"
# ...and of its InferOutputTensor.
_TENSOR_NAME, _TENSOR_DATATYPE, _TENSOR_SHAPE = b"\x0a", b"\x12", b"\x1a"

_CACHE_LIMIT = 4096
"""Distinct (model, version) heads and output headers kept; past it the caches start over (a
client sending ever-new batch sizes or model names cannot grow them without bound)."""


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int, or of a negative int64 (10 bytes)."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode()) if text else b""


class ResponseEncoder:
    """Encodes `InferResponse`s as ModelInferResponse wire bytes, every output raw."""

    __slots__ = ("_heads", "_tensors")

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str], bytes] = {}
        self._tensors: dict[tuple[str, np.dtype[Any], tuple[int, ...]], bytes] = {}

    def encode(self, response: InferResponse) -> bytes:
        head = self._heads.get((response.model, response.version))
        if head is None:
            head = self._head(response.model, response.version)
        parts = [head]
        if response.id:
            parts.append(_string(_ID, response.id))
        raws = []
        tensors = self._tensors
        for name, array in response.outputs.items():
            tensor = tensors.get((name, array.dtype, array.shape))
            if tensor is None:
                tensor = self._tensor(name, array)
            parts.append(tensor)
            data = codec.encode_raw(array)
            raws.append(_RAW + varint(len(data)))
            raws.append(data)
        parts += raws
        return b"".join(parts)

    def _head(self, model: str, version: str) -> bytes:
        if len(self._heads) >= _CACHE_LIMIT:
            self._heads.clear()
        head = _string(_MODEL_NAME, model) + _string(_MODEL_VERSION, version)
        self._heads[(model, version)] = head
        return head

    def _tensor(self, name: str, array: npt.NDArray[Any]) -> bytes:
        if len(self._tensors) >= _CACHE_LIMIT:
            self._tensors.clear()
        body = _string(_TENSOR_NAME, name) + _string(
            _TENSOR_DATATYPE, codec.datatype_of(array.dtype)
        )
        if array.shape:
            body += _field(_TENSOR_SHAPE, b"".join(varint(int(d)) for d in array.shape))
        tensor = _field(_OUTPUTS, body)
        self._tensors[(name, array.dtype, array.shape)] = tensor
        return tensor
