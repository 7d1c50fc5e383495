"""Client mistakes are INVALID_ARGUMENT, never INTERNAL (10); unknown models create no storage
(8); every stream message gets an answer (11); non-finite inputs are refused unless allowed
(15)."""

from __future__ import annotations

import math
import random
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from kiln.serving.launcher import kiln_serve
from kiln.serving.traffic_hook import TrafficSink
from tests.integration.grpc_harness import INPUT, ONE_THREAD, OUTPUT, RunningServer, images
from tests.integration.grpc_hostile.calls import (
    HUGE_NUMBER,
    INVALID,
    SERVICE,
    assert_clean,
    assert_serves,
    failure,
    good,
    read_stream,
    reshaped,
)

# -- 8: requests for models that are not served are counted, never stored under their name ------


def test_requests_for_unknown_models_create_no_storage_and_a_bounded_metric(
    home: Path, server: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub,
    sink: TrafficSink,
) -> None:  # fmt: skip
    rng = random.Random(8)
    names = [f"m{rng.getrandbits(64):x}" for _ in range(200)] + ["x" * 10_000, "a/../b\x00"]
    for name in names:
        request = good(model_name=name)
        assert failure(lambda r=request: stub.ModelInfer(r, timeout=30)).code() in (
            grpc.StatusCode.NOT_FOUND,
        )
    stub.ModelInfer(good(), timeout=30)
    assert sink.flush(60)
    traffic = home / "traffic"
    assert sorted(p.name for p in traffic.iterdir()) == ["model=digits"]
    port = server.endpoints.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert not any(name[:20] in text for name in names)
    failed = [
        line
        for line in text.splitlines()
        if line.startswith("kiln_inference_failure_total{") and 'code="not_found"' in line
    ]
    assert len(failed) == 1 and 'model=""' in failed[0], failed
    assert float(failed[0].rsplit(" ", 1)[1]) >= len(names)


# -- 10: client mistakes are INVALID_ARGUMENT, never INTERNAL -----------------------------------


def _typed_empty(dims: list[int]) -> service_pb2.ModelInferRequest:
    request = reshaped(dims, b"")
    request.ClearField("raw_input_contents")
    request.inputs[0].contents.SetInParent()
    return request


MISTAKES: dict[str, tuple[str, Any, str]] = {
    "rank 65": ("ModelInfer", reshaped([1] * 65, bytes(4)), "dimensions"),
    "rank 100": ("ModelInfer", reshaped([1] * 100, bytes(4)), "dimensions"),
    "zero size, huge dims": ("ModelInfer", reshaped([0, 2**62, 2**62, 8], b""), "empty"),
    "zero size, huge dims, typed": ("ModelInfer", _typed_empty([0, 2**40, 2**40]), "empty"),
    "zero size, huge dims, BYTES": (
        "ModelInfer", reshaped([2**62, 0, 2**62], b"", "BYTES"), "empty",
    ),
    "infer version": ("ModelInfer", good(model_version=HUGE_NUMBER), "version"),
    "metadata version": (
        "ModelMetadata", service_pb2.ModelMetadataRequest(name="digits", version=HUGE_NUMBER),
        "version",
    ),
    "config version": (
        "ModelConfig", service_pb2.ModelConfigRequest(name="digits", version=HUGE_NUMBER),
        "version",
    ),
    "statistics version": (
        "ModelStatistics",
        service_pb2.ModelStatisticsRequest(name="digits", version=HUGE_NUMBER),
        "version",
    ),
    "ready version": (
        "ModelReady", service_pb2.ModelReadyRequest(name="digits", version=HUGE_NUMBER),
        "version",
    ),
}  # fmt: skip


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_client_mistakes_are_invalid_argument_not_internal(
    server: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub, mistake: str
) -> None:
    method, request, says = MISTAKES[mistake]
    error = failure(lambda: getattr(stub, method)(request, timeout=30))
    assert error.code() == INVALID, error.details()
    assert says in error.details() and len(error.details()) < 1000
    assert_serves(server, stub)


# -- 11: every stream message gets an answer; a broken one ends the stream with a status --------


def test_a_broken_stream_message_ends_the_stream_with_a_status(
    channel: grpc.Channel,
) -> None:
    stream = channel.stream_stream(SERVICE + "ModelStreamInfer")
    messages = [
        good(id="s1").SerializeToString(),
        b"\xff\xff\xff",
        good(id="s3").SerializeToString(),
    ]
    answers: list[service_pb2.ModelStreamInferResponse] = []
    error = failure(lambda: read_stream(stream(iter(messages), timeout=20), answers))
    assert error.code() == INVALID, error.details()
    assert "message 2 of the stream" in error.details()
    assert_clean(error.details())
    assert [a.infer_response.id for a in answers] == ["s1"]
    assert not answers[0].error_message


def test_every_stream_request_gets_an_answer_or_an_error_message(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    deep = reshaped([1] * 100, bytes(4))
    deep.id = "deep"
    nan = good(id="nan")
    nan.raw_input_contents[0] = np.full((1, 1, 28, 28), np.nan, np.float32).tobytes()
    requests = [deep, good(id="ok"), nan, good(id="ok2", model_name="nope")]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=20))
    by_id = {a.infer_response.id: a for a in answers}
    assert sorted(by_id) == ["deep", "nan", "ok", "ok2"]
    assert "dimensions" in by_id["deep"].error_message
    assert not by_id["ok"].error_message and by_id["ok"].infer_response.outputs[0].name == OUTPUT
    assert "'input'" in by_id["nan"].error_message
    assert "'nope' is not served" in by_id["ok2"].error_message


# -- 15: non-finite inputs are refused unless the server allows them ---------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_are_refused_naming_the_input(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, value: float
) -> None:
    x = images(2)
    x[1, 0, 3, 4] = value
    raw = good(2)
    raw.raw_input_contents[0] = x.tobytes()
    typed = service_pb2.ModelInferRequest(model_name="digits")
    typed.inputs.add(name=INPUT, datatype="FP32", shape=[2, 1, 28, 28])
    typed.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    for request in (raw, typed):
        error = failure(lambda r=request: stub.ModelInfer(r, timeout=30))
        assert error.code() == INVALID, error.details()
        assert "input 'input'" in error.details() and "NaN or infinite" in error.details()
        assert "KILN_SERVE_ALLOW_NONFINITE" in error.details()


def test_allow_nonfinite_lets_them_through(home: Path) -> None:
    x = images(1)
    x[0, 0, 0, 0] = math.nan
    tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with (
        kiln_serve(
            "--no-traffic-log", "--allow-nonfinite", "digits", home=home, env=ONE_THREAD
        ) as served,
        triton.InferenceServerClient(served.url) as client,
    ):
        logits = client.infer("digits", [tensor]).as_numpy(OUTPUT)
    assert logits is not None and logits.shape == (1, 10)
