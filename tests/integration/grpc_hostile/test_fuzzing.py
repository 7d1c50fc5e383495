"""Raw-byte fuzzing of ModelInfer and ModelStreamInfer: nothing makes the server answer
INTERNAL, hang or leak, and it keeps serving."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.integration.grpc_harness import OUTPUT, RunningServer
from tests.integration.grpc_hostile.calls import (
    FORBIDDEN,
    INVALID,
    SERVICE,
    assert_clean,
    assert_serves,
    good,
    read_stream,
)


def _fuzz_base() -> bytes:
    request = good(id="fuzz")
    request.parameters["timeout"].int64_param = 10_000_000
    request.outputs.add(name=OUTPUT)
    return request.SerializeToString()


def fuzzed(rng: random.Random, valid: bytes) -> bytes:
    """Random bytes, a truncated valid message, or a valid message with bits flipped (mostly
    in its head, where the fields other than the tensor data are)."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 96))
    if kind == 1:
        return valid[: rng.randrange(len(valid))]
    flipped = bytearray(valid)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(120) if rng.random() < 0.8 else rng.randrange(len(flipped))
        flipped[at] ^= 1 << rng.randrange(8)
    return bytes(flipped)


def decodes(raw: bytes) -> bool:
    try:
        service_pb2.ModelInferRequest.FromString(raw)
    except Exception:
        return False
    return True


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status `call` ends with, and its details."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_fuzzed_model_infer_bytes_never_break_the_server(
    server: RunningServer, channel: grpc.Channel, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    rng = random.Random(1313)
    valid = _fuzz_base()
    infer = channel.unary_unary(SERVICE + "ModelInfer")  # bytes in, bytes out
    codes: dict[grpc.StatusCode, int] = {}
    for _ in range(400):
        message = fuzzed(rng, valid)
        code, details = outcome(
            lambda m=message: service_pb2.ModelInferResponse.FromString(infer(m, timeout=10))
        )
        assert code not in FORBIDDEN, (code, details, message[:120])
        assert_clean(details)
        codes[code] = codes.get(code, 0) + 1
    assert codes.get(INVALID, 0) > 100 and codes.get(grpc.StatusCode.OK, 0) > 0, codes
    assert_serves(server, stub)


def test_fuzzed_stream_messages_each_get_an_answer_or_end_the_stream(
    server: RunningServer, channel: grpc.Channel, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    rng = random.Random(1314)
    valid = _fuzz_base()
    stream = channel.stream_stream(SERVICE + "ModelStreamInfer")
    broken_streams = 0
    for _ in range(40):
        messages = [valid, *(fuzzed(rng, valid) for _ in range(rng.randint(1, 5))), valid]
        first_broken = next((i for i, m in enumerate(messages) if not decodes(m)), None)
        got: list[service_pb2.ModelStreamInferResponse] = []
        code, details = outcome(
            lambda m=messages, got=got: read_stream(stream(iter(m), timeout=20), got)
        )
        assert code not in FORBIDDEN, (code, details)
        assert_clean(details)
        assert code == (grpc.StatusCode.OK if first_broken is None else INVALID), details
        assert len(got) == (len(messages) if first_broken is None else first_broken)
        assert all(a.error_message or a.infer_response.outputs for a in got)
        broken_streams += first_broken is not None
    assert 0 < broken_streams < 40
    assert_serves(server, stub)
