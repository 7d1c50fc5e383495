"""What the hostile-client tests send and check: well-formed requests to break, and the rules
an answer must keep."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.integration.grpc_harness import INPUT, RunningServer, images, reference_outputs

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
"""What a client mistake may never produce: a server bug, or a hang (past the deadline)."""
LEAKS = ("DecodeError", "NotImplementedError", "<class", "Traceback", "Error parsing")
CLIENT_DEFAULT_RECEIVE = 4 * 1024 * 1024
SERVICE = "/inference.GRPCInferenceService/"
HUGE_NUMBER = "9" * 5000  # past Python's 4,300-digit int-parsing limit
FEEDBACK_LIMIT = 50_000
LONG = "x" * 10_000
"""Text far longer than any name: what a client echoes back must be bounded."""
CONTROL = "a\x00b\u202ec\x1b[31m"
"""Text with control characters: what a client echoes back must escape them."""


def good(rows: int = 1, seed: int = 0, **fields: Any) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(**{"model_name": "digits", **fields})
    request.inputs.add(name=INPUT, datatype="FP32", shape=[rows, 1, 28, 28])
    request.raw_input_contents.append(images(rows, seed).tobytes())
    return request


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    """The error `call` fails with (it must fail)."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def assert_clean(details: str) -> None:
    assert not any(leak in details for leak in LEAKS), details


def assert_serves(server: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    x = images(2, seed=99)
    request = good(2, seed=99)
    response = stub.ModelInfer(request, timeout=30)
    logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 10)
    expected = reference_outputs(server.registry, "digits", 1, x)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def reshaped(dims: list[int], raw: bytes, datatype: str = "FP32") -> service_pb2.ModelInferRequest:
    request = good()
    request.inputs[0].datatype = datatype
    request.inputs[0].ClearField("shape")
    request.inputs[0].shape.extend(dims)
    request.raw_input_contents[0] = raw
    return request


def read_stream(call: Any, into: list[service_pb2.ModelStreamInferResponse]) -> None:
    """Read a raw stream's answers into `into` until it ends (raises its error status)."""
    for raw in call:
        into.append(service_pb2.ModelStreamInferResponse.FromString(raw))
