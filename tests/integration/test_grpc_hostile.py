"""`kiln serve` against a hostile or careless client (issue 13): real servers on port 0, the
stock Triton client, plain gRPC channels and raw bytes.

Nothing a client sends may make the server answer INTERNAL, hang, leak how it is built (class
names, file paths, server software), echo unbounded input, write storage named by the client,
drop labels it acknowledged, or let an anonymous client take production down.
"""

from __future__ import annotations

import math
import random
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import kiln.registry
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2, feedback_pb2_grpc
from kiln.serving.launcher import kiln_serve
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import TrafficSettings, scan_feedback
from tests.conftest import wait_until
from tests.integration.grpc_harness import (
    INPUT,
    ONE_THREAD,
    OUTPUT,
    RunningServer,
    images,
    reference_outputs,
    register,
    running_server,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
"""What a client mistake may never produce: a server bug, or a hang (past the deadline)."""
LEAKS = ("DecodeError", "NotImplementedError", "<class", "Traceback", "Error parsing")
CLIENT_DEFAULT_RECEIVE = 4 * 1024 * 1024
SERVICE = "/inference.GRPCInferenceService/"
HUGE_NUMBER = "9" * 5000  # past Python's 4,300-digit int-parsing limit
FEEDBACK_LIMIT = 50_000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    with kiln.registry.open(settings=Settings(home=root / "home")) as registry:
        register(registry, root, "digits", seed=1)
        register(registry, root, "letters", seed=2)
    return root / "home"


@pytest.fixture(scope="module")
def sink(home: Path) -> Iterator[TrafficSink]:
    opened = TrafficSink(home, TrafficSettings(flush_interval_s=60))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def server(home: Path, sink: TrafficSink) -> Iterator[RunningServer]:
    """Default settings (model control off), the real traffic store as its hooks."""
    with running_server(
        home, models=("digits",), sink=sink, max_feedback_items=FEEDBACK_LIMIT
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.url) as opened:  # the client defaults: 4 MB answers
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def feedback(channel: grpc.Channel) -> feedback_pb2_grpc.FeedbackStub:
    return feedback_pb2_grpc.FeedbackStub(channel)


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


# -- 3b, 15: feedback is refused in the answer or kept; never silently dropped ------------------


def items(labels: list[int], model: str = "digits") -> list[feedback_pb2.FeedbackItem]:
    return [
        feedback_pb2.FeedbackItem(request_id=f"r{i}", label=label, model_name=model)
        for i, label in enumerate(labels)
    ]


def test_a_feedback_batch_over_the_limit_is_refused_whole(
    server: RunningServer, feedback: feedback_pb2_grpc.FeedbackStub
) -> None:
    before = len(server.feedback)
    request = feedback_pb2.SubmitFeedbackBatchRequest(items=items([1] * 200_000))
    error = failure(lambda: feedback.SubmitFeedbackBatch(request, timeout=60))
    assert error.code() == INVALID, error.details()
    assert "200000 feedback items" in error.details() and "split" in error.details()
    assert len(server.feedback) == before  # nothing of it was kept


def test_labels_outside_the_models_classes_are_refused_per_item_with_the_range(
    server: RunningServer, feedback: feedback_pb2_grpc.FeedbackStub
) -> None:
    before = len(server.feedback)
    answer = feedback.SubmitFeedbackBatch(
        feedback_pb2.SubmitFeedbackBatchRequest(items=items([3, 10, 2**63 - 1, -1, 9])),
        timeout=30,
    )
    assert answer.accepted == 2
    reasons = {r.index: r.reason for r in answer.rejected}
    assert sorted(reasons) == [1, 2, 3]
    assert "valid labels are 0-9" in reasons[1] and "valid labels are 0-9" in reasons[2]
    assert "negative" in reasons[3]
    assert [f.label for f in server.feedback[before:]] == [3, 9]
    for label in (10, 2**63 - 1):
        item = items([label])[0]
        error = failure(
            lambda item=item: feedback.SubmitFeedback(
                feedback_pb2.SubmitFeedbackRequest(item=item), timeout=30
            )
        )
        assert error.code() == INVALID and "0-9" in error.details()


def test_a_call_whose_items_are_all_refused_fits_a_default_client(
    server: RunningServer, feedback: feedback_pb2_grpc.FeedbackStub
) -> None:
    # Every item refused, each with a different label: the answer lists every index, the
    # reasons summarised, within the 4 MB a client accepts by default.
    labels = [10 + i for i in range(FEEDBACK_LIMIT)]
    answer = feedback.SubmitFeedbackBatch(
        feedback_pb2.SubmitFeedbackBatchRequest(items=items(labels)), timeout=60
    )
    assert answer.accepted == 0
    assert [r.index for r in answer.rejected] == list(range(FEEDBACK_LIMIT))
    assert answer.ByteSize() < CLIENT_DEFAULT_RECEIVE // 2  # room to spare
    full = [r.reason for r in answer.rejected[:100]]
    assert full[0] == "label 10 is out of range: the model has 10 classes, valid labels are 0-9"
    assert all(f"label {10 + i} is out of range" in reason for i, reason in enumerate(full))
    assert {r.reason for r in answer.rejected[100:]} == {"same problem as item 0"}


def test_a_full_feedback_buffer_is_back_pressure_and_keeps_nothing_of_the_call(
    home: Path, tmp_path: Path
) -> None:
    # The buffer size comes from the server's traffic settings (KILN_TRAFFIC_*), as users set it.
    env = {"KILN_TRAFFIC_MAX_BUFFERED_ROWS": "100", "KILN_TRAFFIC_FLUSH_INTERVAL_S": "60"}
    own = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=own)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with (
        kiln_serve("digits", home=own, env={**ONE_THREAD, **env}) as served,
        grpc.insecure_channel(served.url) as ch,
    ):
        stub = feedback_pb2_grpc.FeedbackStub(ch)
        request = feedback_pb2.SubmitFeedbackBatchRequest(items=items([1] * 500))
        error = failure(lambda: stub.SubmitFeedbackBatch(request, timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "retry" in error.details() and "nothing of this call was kept" in error.details()
        assert ("grpc-retry-pushback-ms", "1000") in tuple(error.trailing_metadata() or ())
        kept = stub.SubmitFeedbackBatch(
            feedback_pb2.SubmitFeedbackBatchRequest(items=items([2] * 50)), timeout=30
        )
        assert kept.accepted == 50 and not kept.rejected
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.output()[-2000:]
    stored = scan_feedback(own).frame.collect()
    assert stored.height == 50 and set(stored["label"]) == {2}


# -- 7: model control is off unless enabled; readiness tells the truth --------------------------


def test_model_control_is_off_by_default(
    server: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    for call in (
        lambda: stub.RepositoryModelUnload(
            service_pb2.RepositoryModelUnloadRequest(model_name="digits"), timeout=30
        ),
        lambda: stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name="letters"), timeout=30
        ),
    ):
        error = failure(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert (
            "--model-control" in error.details() and "KILN_SERVE_MODEL_CONTROL" in error.details()
        )
    assert stub.ModelReady(service_pb2.ModelReadyRequest(name="digits"), timeout=30).ready
    assert not stub.ModelReady(service_pb2.ModelReadyRequest(name="letters"), timeout=30).ready
    assert_serves(server, stub)


def health(channel: grpc.Channel, service: str) -> int:
    check = health_pb2_grpc.HealthStub(channel).Check
    return int(check(health_pb2.HealthCheckRequest(service=service), timeout=30).status)


def test_an_unloaded_production_model_makes_the_server_unready_until_it_is_back(
    home: Path,
) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    with (
        running_server(home, models=("digits",), model_control=True) as server,
        server.client() as client,
        grpc.insecure_channel(server.url) as channel,
    ):
        assert client.is_server_ready() and health(channel, "") == serving
        client.unload_model("digits")
        assert not client.is_model_ready("digits")
        assert not client.is_server_ready()
        assert wait_until(lambda: health(channel, "digits") == not_serving, 10)
        assert wait_until(lambda: health(channel, "") == not_serving, 10)
        assert client.is_server_live()
        client.load_model("letters")  # an extra model does not make up for production
        assert client.is_model_ready("letters") and not client.is_server_ready()
        client.unload_model("letters")  # ... and unloading an extra does not matter
        client.load_model("digits")
        assert client.is_model_ready("digits") and client.is_server_ready()
        assert wait_until(lambda: health(channel, "") == serving, 10)
        assert health(channel, "digits") == serving


def test_kiln_serve_model_control_option_allows_load_and_unload(home: Path) -> None:
    with (
        kiln_serve(
            "--no-traffic-log", "--model-control", "digits", home=home, env=ONE_THREAD
        ) as served,
        triton.InferenceServerClient(served.url) as client,
    ):
        client.load_model("letters")
        assert client.is_model_ready("letters")
        client.unload_model("letters")
        assert not client.is_model_ready("letters")
    with (
        kiln_serve("--no-traffic-log", "digits", home=home, env=ONE_THREAD) as served,
        triton.InferenceServerClient(served.url) as client,
    ):
        with pytest.raises(InferenceServerException, match="--model-control") as err:
            client.unload_model("digits")
        assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert client.is_model_ready("digits")


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


def _reshaped(dims: list[int], raw: bytes, datatype: str = "FP32") -> service_pb2.ModelInferRequest:
    request = good()
    request.inputs[0].datatype = datatype
    request.inputs[0].ClearField("shape")
    request.inputs[0].shape.extend(dims)
    request.raw_input_contents[0] = raw
    return request


def _typed_empty(dims: list[int]) -> service_pb2.ModelInferRequest:
    request = _reshaped(dims, b"")
    request.ClearField("raw_input_contents")
    request.inputs[0].contents.SetInParent()
    return request


MISTAKES: dict[str, tuple[str, Any, str]] = {
    "rank 65": ("ModelInfer", _reshaped([1] * 65, bytes(4)), "dimensions"),
    "rank 100": ("ModelInfer", _reshaped([1] * 100, bytes(4)), "dimensions"),
    "zero size, huge dims": ("ModelInfer", _reshaped([0, 2**62, 2**62, 8], b""), "empty"),
    "zero size, huge dims, typed": ("ModelInfer", _typed_empty([0, 2**40, 2**40]), "empty"),
    "zero size, huge dims, BYTES": (
        "ModelInfer", _reshaped([2**62, 0, 2**62], b"", "BYTES"), "empty",
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


def test_huge_versions_in_load_and_unload_are_invalid_argument(home: Path) -> None:
    with (
        running_server(home, models=("digits",), model_control=True) as server,
        grpc.insecure_channel(server.url) as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call in (stub.RepositoryModelLoad, stub.RepositoryModelUnload):
            request_type = (
                service_pb2.RepositoryModelLoadRequest
                if call is stub.RepositoryModelLoad
                else service_pb2.RepositoryModelUnloadRequest
            )
            error = failure(
                lambda c=call, t=request_type: c(t(model_name=f"digits:{HUGE_NUMBER}"), timeout=30)
            )
            assert error.code() == INVALID, error.details()
            assert len(error.details()) < 1000
        for text in (LONG, CONTROL, f"digits:{LONG}", f"{CONTROL}:1", f"digits@{CONTROL}"):
            for call, request_type in (
                (stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest),
                (stub.RepositoryModelUnload, service_pb2.RepositoryModelUnloadRequest),
            ):
                error = failure(
                    lambda c=call, t=request_type, text=text: c(t(model_name=text), timeout=30)
                )
                assert error.code() in (INVALID, grpc.StatusCode.NOT_FOUND), error.details()
                details = error.details()
                assert len(details) < 2000, (len(details), details[:200])
                assert not any(c in details for c in ("\x00", "\u202e", "\x1b")), details
        missing = failure(
            lambda: stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(model_name="digits:12345"), timeout=30
            )
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND, missing.details()
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="digits"), timeout=30).ready


# -- 11: every stream message gets an answer; a broken one ends the stream with a status --------


def read_stream(call: Any, into: list[service_pb2.ModelStreamInferResponse]) -> None:
    """Read a raw stream's answers into `into` until it ends (raises its error status)."""
    for raw in call:
        into.append(service_pb2.ModelStreamInferResponse.FromString(raw))


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
    deep = _reshaped([1] * 100, bytes(4))
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


# -- 12: no class names, no server paths, no server software in answers -------------------------

UNARY = {
    SERVICE + name: message
    for name, message in [
        ("ServerLive", b""), ("ServerReady", b""), ("ModelReady", b""), ("ServerMetadata", b""),
        ("ModelMetadata", b""), ("ModelConfig", b""), ("ModelInfer", b""),
        ("ModelStatistics", b""), ("RepositoryIndex", b""), ("RepositoryModelLoad", b""),
        ("RepositoryModelUnload", b""),
    ]
} | {"/kiln.v1.Feedback/SubmitFeedback": b"", "/kiln.v1.Feedback/SubmitFeedbackBatch": b"",
     "/grpc.health.v1.Health/Check": b""}  # fmt: skip


@pytest.mark.parametrize("method", list(UNARY))
def test_undecodable_requests_are_invalid_argument_without_internals(
    channel: grpc.Channel, method: str
) -> None:
    error = failure(lambda: channel.unary_unary(method)(b"\xff\xff\xff\xff", timeout=30))
    assert error.code() == INVALID, error.details()
    assert "is not a valid" in error.details()
    assert_clean(error.details())


def test_undecodable_streaming_requests_are_invalid_argument(channel: grpc.Channel) -> None:
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
    error = failure(lambda: list(watch(b"\xff\xff", timeout=30)))
    assert error.code() == INVALID and "is not a valid" in error.details()
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
    error = failure(lambda: list(reflect(iter([b"\xff\xff"]), timeout=30)))
    assert error.code() == INVALID and "is not a valid" in error.details()


def test_unimplemented_rpcs_say_so_without_internals(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    for call, request in (
        (stub.SystemSharedMemoryStatus, service_pb2.SystemSharedMemoryStatusRequest()),
        (stub.CudaSharedMemoryRegister, service_pb2.CudaSharedMemoryRegisterRequest()),
        (stub.TraceSetting, service_pb2.TraceSettingRequest()),
        (stub.LogSettings, service_pb2.LogSettingsRequest()),
    ):
        error = failure(lambda c=call, r=request: c(r, timeout=30))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "not implemented" in error.details() and "ServerMetadata" in error.details()
        assert_clean(error.details())


def test_the_metrics_port_does_not_name_its_server_software(server: RunningServer) -> None:
    port = server.endpoints.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        header = response.headers.get("Server", "")
    assert "Python" not in header and "WSGIServer" not in header, header


def test_failures_shown_to_clients_name_no_server_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with running_server(home, models=("digits",), poll_interval_s=0.1, model_control=True) as s:
        version = register(s.registry, tmp_path, "digits", seed=2, alias=None)
        artifact = s.registry.artifacts("digits", version.version, "onnx")[0]
        s.registry.artifact_file(artifact).unlink()
        s.registry.promote(version.ref, "production", gates=[], reason="test")
        with s.client() as client:

            def reasons() -> list[str]:
                index = client.get_model_repository_index(as_json=True)["models"]
                return [m.get("reason", "") for m in index if "digits:2" in m.get("reason", "")]

            assert wait_until(lambda: bool(reasons()), 30)
            with pytest.raises(InferenceServerException) as err:
                client.load_model("digits:2")
            shown = [*reasons(), err.value.message()]
        for text in shown:
            assert "missing" in text, text
            assert str(home) not in text and str(tmp_path) not in text, text


# -- 13: what is echoed is quoted and bounded ---------------------------------------------------

LONG = "x" * 10_000
CONTROL = "a\x00b\u202ec\x1b[31m"


def _named_input(name: str) -> service_pb2.ModelInferRequest:
    request = good()
    request.inputs[0].name = name
    return request


def _output(name: str) -> service_pb2.ModelInferRequest:
    request = good()
    request.outputs.add(name=name)
    return request


def _datatype(name: str) -> service_pb2.ModelInferRequest:
    request = good()
    request.inputs[0].datatype = name
    return request


ECHOES: dict[str, tuple[Callable[[str], tuple[str, Any]], str]] = {
    "model name": (lambda text: ("ModelInfer", good(model_name=text)), "is not served"),
    "version": (lambda text: ("ModelInfer", good(model_version=text)), "has no version"),
    "input name": (lambda text: ("ModelInfer", _named_input(text)), "unexpected input"),
    "output name": (lambda text: ("ModelInfer", _output(text)), "unknown output"),
    "datatype": (lambda text: ("ModelInfer", _datatype(text)), "unknown datatype"),
    "metadata name": (
        lambda text: ("ModelMetadata", service_pb2.ModelMetadataRequest(name=text)),
        "is not served",
    ),
    "statistics name": (
        lambda text: ("ModelStatistics", service_pb2.ModelStatisticsRequest(name=text)),
        "is not served",
    ),
}


@pytest.mark.parametrize("field", list(ECHOES))
@pytest.mark.parametrize("text", [LONG, CONTROL], ids=["10 KB", "control characters"])
def test_echoed_input_is_quoted_and_bounded(
    home: Path, stub: service_pb2_grpc.GRPCInferenceServiceStub, field: str, text: str
) -> None:
    make, says = ECHOES[field]
    method, request = make(text)
    error = failure(lambda: getattr(stub, method)(request, timeout=30))
    details = error.details()
    assert error.code() in (INVALID, grpc.StatusCode.NOT_FOUND), (error.code(), details[:200])
    assert says in details, details[:200]
    assert len(details) < 2000, (len(details), details[:200])
    assert not any(c in details for c in ("\x00", "\u202e", "\x1b")), details
    if text is LONG:
        assert "... (10000 characters)" in details, details
    assert_clean(details)


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


# -- acceptance: raw-byte fuzzing of ModelInfer and ModelStreamInfer ---------------------------


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
