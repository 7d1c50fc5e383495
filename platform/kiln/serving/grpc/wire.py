"""ModelInfer's messages on the wire: responses written straight to protobuf bytes, requests
read from a cache of the parts that repeat.

**Responses.**
Building a `ModelInferResponse` object and serialising it costs several microseconds of
Python per request, and on a busy 2-core host every microsecond of Python on the event loop
shows up about three times over (cold caches, a client sharing the cores). Everything in a
response but the request id, the batch dimension and the output bytes is the same from one
request to the next, so `ResponseEncoder` encodes those parts once per (model, version) and
per output (name, dtype, shape) and joins cached pieces with the per-request ones.

The bytes are exactly what protobuf's serializer produces for the same message (fields in
field-number order, proto3 defaults omitted, packed shape); `tests/unit/test_serving_wire.py`
holds the encoder to that, byte for byte, and parses the result back with the generated class.

**Requests.** A client sends the same ModelInferRequest over and over but for its id and its
raw input bytes: model, version, inputs' names, datatypes and shapes, outputs, parameters.
`RequestDecoder` walks the top-level fields of the wire bytes (a few length-prefixed fields),
keys a cache by everything but the id and the raw contents, and builds the request from the
cached decode: the id decoded, each raw input a read-only array over the request's own bytes
(no copy), its length checked. The first time (and for anything unusual: typed contents,
BYTES inputs, a length that does not match, a field it does not expect) the message goes
through protobuf and `convert.infer_request`, which raises the precise error; what that decode
produced is then cached. Parsing with protobuf and converting cost ~7 us per request here,
the cached path ~3 us.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kiln.serving import codec
from kiln.serving.grpc import convert
from kiln.serving.grpc.generated.inference import grpc_service_pb2 as pb
from kiln.serving.messages import InferRequest, InferResponse, ParameterValue

# Field tags (field number << 3 | wire type 2, length-delimited) of ModelInferResponse...
_MODEL_NAME, _MODEL_VERSION, _ID, _OUTPUTS, _RAW = b"\x0a", b"\x12", b"\x1a", b"\x2a", b"\x32"
# ...and of InferOutputTensor.
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


_TRANSPORT = convert.TRANSPORT


class _Head:
    """What repeats from one request to the next, decoded once."""

    __slots__ = ("inputs", "model", "outputs", "parameters", "timeout_us", "version")

    def __init__(
        self,
        request: InferRequest,
        inputs: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...],
    ) -> None:
        self.model = request.model
        self.version = request.version
        self.outputs = request.outputs
        self.timeout_us = request.timeout_us
        self.parameters: dict[str, ParameterValue] = dict(request.parameters)
        self.inputs = inputs
        """(name, dtype, shape, byte length) per input, in the request's order."""


class RequestDecoder:
    """Decodes ModelInferRequest wire bytes into `InferRequest`s (see the module docstring)."""

    __slots__ = ("_heads",)

    def __init__(self) -> None:
        self._heads: dict[bytes, _Head] = {}

    def decode(self, data: bytes, received_ns: int) -> InferRequest:
        """The request `data` holds; raises what `convert` raises for a bad one."""
        split = _split(data)
        if split is not None:
            key, request_id, raws = split
            head = self._heads.get(key)
            if head is not None and len(raws) == len(head.inputs):
                inputs: dict[str, npt.NDArray[Any]] = {}
                for (name, dtype, shape, size), raw in zip(head.inputs, raws):  # noqa: B905 (equal)
                    if len(raw) != size:
                        break  # the slow path names the problem
                    inputs[name] = np.ndarray(shape, dtype, raw)
                else:
                    parameters = dict(head.parameters) if head.parameters else {}
                    return InferRequest(
                        head.model, inputs, head.version, request_id, head.outputs,
                        head.timeout_us, parameters, received_ns, _TRANSPORT,
                    )  # fmt: skip
        message = convert.decode(pb.ModelInferRequest, data)
        request = convert.infer_request(message, received_ns)
        if split is not None:
            self._learn(split[0], request, split[2])
        return request

    def _learn(self, key: bytes, request: InferRequest, raws: list[memoryview]) -> None:
        # Only requests whose every input came raw and numeric: the cached path rebuilds
        # exactly those (np.ndarray over the bytes), anything else takes the slow path.
        if not raws or len(raws) != len(request.inputs):
            return
        inputs = []
        for (name, array), raw in zip(request.inputs.items(), raws, strict=True):
            if (
                array.dtype.kind in "OSU"
                or array.dtype.byteorder == ">"
                or array.nbytes != len(raw)
            ):
                return
            inputs.append((name, array.dtype, array.shape, len(raw)))
        if len(self._heads) >= _CACHE_LIMIT:
            self._heads.clear()
        self._heads[key] = _Head(request, tuple(inputs))


def _split(data: bytes) -> tuple[bytes, str, list[memoryview]] | None:
    """(everything but the id and the raw contents, the id, each raw content) of a
    ModelInferRequest's wire bytes; None for anything but length-delimited fields 1-7 (the
    only wire type ModelInferRequest's fields have), a length past the end or an id that is no
    UTF-8: the protobuf parser then decides."""
    view = memoryview(data)
    end = len(data)
    spans: list[int] = []  # start, stop, start, stop... of the kept fields, adjacent ones merged
    raws: list[memoryview] = []
    request_id = ""
    pos = 0
    try:
        while pos < end:
            start = pos
            tag = data[pos]
            if tag & 7 != 2 or tag < 0x0A or tag > 0x3A:  # 0x3A: raw_input_contents
                return None
            length = data[pos + 1]
            pos += 2
            if length >= 0x80:  # a multi-byte varint length (inputs over 127 bytes)
                length, pos = _long_varint(data, pos - 1)
            stop = pos + length
            if stop > end:
                return None
            if tag == 0x3A:
                raws.append(view[pos:stop])
            elif tag == 0x1A:  # id
                request_id = data[pos:stop].decode()
            elif spans and spans[-1] == start:
                spans[-1] = stop
            else:
                spans += (start, stop)
            pos = stop
    except (IndexError, UnicodeDecodeError):
        return None
    if len(spans) == 2:
        return data[spans[0] : spans[1]], request_id, raws
    return (
        b"".join([data[spans[i] : spans[i + 1]] for i in range(0, len(spans), 2)]),
        request_id,
        raws,
    )


def _long_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; IndexError past the end or beyond the
    5 bytes a message length can take (the parser then decides)."""
    value = shift = 0
    for index in range(pos, pos + 5):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    raise IndexError("varint too long")
