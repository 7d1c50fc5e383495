"""What leaves the server: no class names, server paths or server software (12), and what is
echoed is quoted and bounded (13)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import kiln.registry
from kiln.settings import Settings
from tests.conftest import wait_until
from tests.integration.grpc_harness import RunningServer, register, running_server
from tests.integration.grpc_hostile.calls import (
    CONTROL,
    INVALID,
    LONG,
    SERVICE,
    assert_clean,
    failure,
    good,
)

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
