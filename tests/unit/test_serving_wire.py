"""The hand-written ModelInferResponse encoder is byte-for-byte protobuf's serializer, and a
decoded ModelInferRequest puts every field where the core reads it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

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
