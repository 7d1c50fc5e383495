"""TLS and the bearer token, against real servers with the stock Triton client."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import INPUT, images, register, running_server

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security")
    with kiln.registry.open(settings=Settings(home=root / "home")) as registry:
        register(registry, root, "digits", seed=1)
        register(registry, root, "letters", seed=2)
    return root / "home"


def infer(client: triton.InferenceServerClient, **kwargs: object) -> str:
    tensor = triton.InferInput(INPUT, [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(images(1))
    return str(client.infer("digits", [tensor], **kwargs).get_response().model_version)  # type: ignore[arg-type]


def test_token_guards_repository_load_and_unload_only(home: Path) -> None:
    with running_server(home, models=("digits",), token=TOKEN) as server, server.client() as client:
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException, match="Bearer TOKEN") as err:
                call("letters")
            assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="token is wrong"):
            client.load_model("letters", headers={"authorization": "Bearer guess"})
        client.load_model("letters", headers=AUTH)
        assert client.is_model_ready("letters")
        client.unload_model("letters", headers=AUTH)
        assert infer(client) == "1"  # inference stays open


def test_token_for_inference_guards_inference_but_not_probes(home: Path) -> None:
    with (
        running_server(home, models=("digits",), token=TOKEN, token_for_inference=True) as server,
        server.client() as client,
    ):
        with pytest.raises(InferenceServerException) as err:
            infer(client)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        assert infer(client, headers=AUTH) == "1"
        assert client.is_server_live() and client.is_server_ready()
        with grpc.insecure_channel(server.url) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; it makes the test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls(home: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with running_server(home, models=("digits",), tls_cert=cert, tls_key=key) as server:
        with triton.InferenceServerClient(
            f"localhost:{server.endpoints.grpc_port}", ssl=True, root_certificates=str(cert)
        ) as client:
            assert infer(client) == "1"
        with server.client() as plaintext, pytest.raises(InferenceServerException):
            plaintext.is_server_live(client_timeout=5)
