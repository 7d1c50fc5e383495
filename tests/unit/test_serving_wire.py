"""The hand-written ModelInferResponse encoder is byte-for-byte protobuf's serializer, and a
decoded ModelInferRequest puts every field where the core reads it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kiln.serving.codec import datatype_of
from kiln.serving.grpc import convert
from kiln.serving.grpc.generated.inference import grpc_service_pb2 as pb
from kiln.serving.grpc.wire import ResponseEncoder, varint
from kiln.serving.messages import InferResponse


def response(outputs: dict[str, npt.NDArray[Any]], **kw: Any) -> InferResponse:
    fields = {"model": "digits", "version": "3", "id": "req-1", **kw}
    return InferResponse(fields["model"], fields["version"], fields["id"], outputs)


CASES = {
    "one fp32 output": {"logits": np.arange(10, dtype=np.float32).reshape(1, 10)},
    "a batch": {"logits": np.random.default_rng(0).random((32, 10), dtype=np.float32)},
    "two outputs": {
        "logits": np.ones((2, 3), np.float32),
        "label": np.array([[7], [300]], np.int64),
    },
    "a scalar": {"score": np.array(1.5, np.float64)},
    "an empty batch": {"y": np.zeros((0, 4), np.float16)},
    "big-endian input": {"y": np.arange(4, dtype=">i4")},
    "bytes": {"text": np.array([b"a", "bé".encode(), b""], dtype=object)},
    "long raw": {"y": np.zeros((1, 100), np.float64)},  # 800 bytes: a two-byte varint length
    "unicode name": {"sortie_é": np.ones(3, np.uint8)},
}


@pytest.mark.parametrize("outputs", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize(
    "meta",
    [{}, {"id": ""}, {"version": ""}, {"model": "m" * 200, "id": "x" * 300}],
    ids=["all", "no id", "no version", "long strings"],
)
def test_encoding_equals_protobuf_serialization(
    outputs: dict[str, npt.NDArray[Any]], meta: dict[str, str]
) -> None:
    answer = response(outputs, **meta)
    encoder = ResponseEncoder()
    expected = convert.infer_response(answer).SerializeToString()
    assert encoder.encode(answer) == expected
    assert encoder.encode(answer) == expected  # again, from the caches
    parsed = pb.ModelInferResponse.FromString(encoder.encode(answer))
    assert parsed.id == answer.id and len(parsed.raw_output_contents) == len(outputs)


def test_cached_headers_follow_the_batch_dimension() -> None:
    encoder = ResponseEncoder()
    for rows in (1, 2, 1, 300, 2):
        answer = response({"logits": np.ones((rows, 10), np.float32)})
        assert encoder.encode(answer) == convert.infer_response(answer).SerializeToString()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)])
def test_varint_matches_protobuf(value: int) -> None:
    message = pb.ModelInferResponse.InferOutputTensor(shape=[value])
    # Field 3, packed: tag, length, then the varint itself.
    assert message.SerializeToString() == b"\x1a" + varint(len(varint(value))) + varint(value)


def test_a_decoded_request_has_every_field_where_the_core_reads_it() -> None:
    message = pb.ModelInferRequest(model_name="digits", model_version="2", id="r1")
    message.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    message.raw_input_contents.append(np.arange(2, dtype=np.float32).tobytes())
    message.outputs.add(name="logits")
    message.parameters["timeout"].int64_param = 500
    message.parameters["priority"].int64_param = 1
    request = convert.infer_request(message, 12345)
    assert (request.model, request.version, request.id) == ("digits", "2", "r1")
    assert list(request.inputs) == ["input"] and request.inputs["input"].tolist() == [[0.0, 1.0]]
    assert request.outputs == ("logits",)
    assert request.timeout_us == 500 and dict(request.parameters) == {"priority": 1}
    assert request.received_ns == 12345 and request.transport == "grpc"


def _request(**kw: Any) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=kw.get("model", "digits"), id=kw.get("id", ""))
    for name, array in kw.get("inputs", {"input": np.ones((1, 2), np.float32)}).items():
        message.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        message.raw_input_contents.append(array.tobytes())
    for name in kw.get("outputs", ()):
        message.outputs.add(name=name)
    for key, value in kw.get("parameters", {}).items():
        message.parameters[key].int64_param = value
    return message


def _fields(request: Any) -> tuple[Any, ...]:
    arrays = {k: (v.dtype, v.shape, v.tobytes()) for k, v in request.inputs.items()}
    return (
        request.model, request.version, request.id, request.outputs, request.timeout_us,
        dict(request.parameters), request.received_ns, request.transport, arrays,
    )  # fmt: skip


REQUESTS = {
    "plain": _request(),
    "with an id": _request(id="req-é-1"),
    "two inputs": _request(
        inputs={"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.zeros((2, 1), np.uint8)}
    ),
    "outputs and parameters": _request(
        outputs=["logits"], parameters={"timeout": 50, "priority": 2}
    ),
    "a long input": _request(inputs={"x": np.ones((4, 1, 28, 28), np.float32)}),  # 12 KiB
}


@pytest.mark.parametrize("message", REQUESTS.values(), ids=REQUESTS.keys())
def test_the_cached_decode_equals_protobufs(message: pb.ModelInferRequest) -> None:
    from kiln.serving.grpc.wire import RequestDecoder

    decoder = RequestDecoder()
    data = message.SerializeToString()
    expected = _fields(convert.infer_request(message, 7))
    assert _fields(decoder.decode(data, 7)) == expected  # learns the head
    cached = decoder.decode(data, 7)
    assert _fields(cached) == expected
    for array in cached.inputs.values():
        assert not array.flags.writeable  # a view over the request's bytes
    # Another id and other values with the same head: from the cache, exactly protobuf's.
    other = pb.ModelInferRequest()
    other.CopyFrom(message)
    other.id = "another"
    other.raw_input_contents[0] = bytes(len(other.raw_input_contents[0]))
    assert _fields(decoder.decode(other.SerializeToString(), 8)) == _fields(
        convert.infer_request(other, 8)
    )
    assert cached.parameters is not decoder.decode(data, 7).parameters  # each its own dict


def test_a_cached_head_with_bad_raw_contents_fails_exactly_as_protobuf_says() -> None:
    from kiln.errors import InferRequestInvalid, InvalidArgument
    from kiln.serving.grpc.wire import RequestDecoder

    decoder = RequestDecoder()
    good = _request(id="a")
    decoder.decode(good.SerializeToString(), 0)
    short = pb.ModelInferRequest()
    short.CopyFrom(good)
    short.raw_input_contents[0] = b"\x00" * 7
    with pytest.raises(InferRequestInvalid, match="needs 8 bytes") as cached:
        decoder.decode(short.SerializeToString(), 0)
    with pytest.raises(InferRequestInvalid) as direct:
        convert.infer_request(short, 0)
    assert str(cached.value) == str(direct.value)
    extra = pb.ModelInferRequest()
    extra.CopyFrom(good)
    extra.raw_input_contents.append(b"\x00" * 8)
    with pytest.raises(InferRequestInvalid, match="2 entries for 1 inputs"):
        decoder.decode(extra.SerializeToString(), 0)
    data = bytearray(good.SerializeToString())
    start = data.index(b"\x1a\x01a")
    data[start + 2] = 0xFF  # the id is no UTF-8 now
    with pytest.raises(InvalidArgument, match=r"not a valid inference\.ModelInferRequest"):
        decoder.decode(bytes(data), 0)
    for hostile in (b"\xff\xff\xff", b"\x0a\x80", b"\x0a\x05ab"):
        with pytest.raises(InvalidArgument):
            decoder.decode(hostile, 0)
    # Field 1 with another wire type: protobuf keeps it as an unknown field; so does the decoder.
    assert decoder.decode(b"\x08\x01", 0).model == ""
    assert decoder.decode(good.SerializeToString(), 0).id == "a"  # still served from the cache


def test_typed_and_bytes_inputs_take_the_protobuf_path_every_time() -> None:
    from kiln.serving.grpc.wire import RequestDecoder

    decoder = RequestDecoder()
    typed = pb.ModelInferRequest(model_name="digits")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    strings = pb.ModelInferRequest(model_name="reviews")
    strings.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    strings.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    for message in (typed, strings, typed, strings):
        decoded = decoder.decode(message.SerializeToString(), 0)
        assert _fields(decoded)[:-1] == _fields(convert.infer_request(message, 0))[:-1]
    assert decoder._heads == {}
