"""Model control is off unless enabled, load and unload refuse what is no reference, and
readiness tells the truth (7, 10)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from kiln.serving.launcher import kiln_serve
from tests.conftest import wait_until
from tests.integration.grpc_harness import ONE_THREAD, RunningServer, running_server
from tests.integration.grpc_hostile.calls import (
    CONTROL,
    HUGE_NUMBER,
    INVALID,
    LONG,
    assert_serves,
    failure,
)

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


# -- 10: load and unload refuse what is no reference, as INVALID_ARGUMENT ---------------------


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
