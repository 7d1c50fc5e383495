"""Model control, the bearer token and TLS over HTTP: the same rules as gRPC's
(test_grpc_security.py), with tritonclient.http and plain requests against real servers."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.integration import test_grpc_security
from tests.integration.grpc_harness import RunningServer, images, running_server
from tests.integration.http_harness import INFER, assert_error, http_input, json_request
from tests.integration.test_grpc_security import AUTH, TOKEN

home = test_grpc_security.home
"""The gRPC security tests' registry: digits (served) and letters (not), per module."""


def infer(client: triton_http.InferenceServerClient, **kwargs: object) -> str:
    result = client.infer("digits", [http_input(images(1))], **kwargs)  # type: ignore[arg-type]
    return str(result.get_response()["model_version"])


def http_client(server: RunningServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.http_url)


def test_model_control_is_off_by_default(home: Path) -> None:
    with running_server(home, models=("digits",)) as server, http_client(server) as client:
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException, match="--model-control") as err:
                call("letters")
            assert err.value.status() == "400"
        assert not client.is_model_ready("letters")
        assert infer(client) == "1"


def test_token_guards_load_and_unload_only(home: Path) -> None:
    with running_server(home, models=("digits",), token=TOKEN) as server:
        with http_client(server) as client:
            for call in (client.load_model, client.unload_model):
                with pytest.raises(InferenceServerException, match="Bearer TOKEN") as err:
                    call("letters")
                assert err.value.status() == "401"
            with pytest.raises(InferenceServerException, match="token is wrong") as err:
                client.load_model("letters", headers={"Authorization": "Bearer guess"})
            assert err.value.status() == "401"
            client.load_model("letters", headers={"Authorization": f"Bearer {TOKEN}"})
            assert client.is_model_ready("letters")
            client.unload_model("letters", headers=AUTH)
            assert not client.is_model_ready("letters")
            assert infer(client) == "1"  # inference stays open
        refused = httpx.post(f"http://{server.http_url}/v2/repository/models/letters/load")
        message = assert_error(refused, 401, "Bearer TOKEN")
        assert TOKEN not in message
        assert refused.headers["www-authenticate"].startswith("Bearer")


def test_token_for_inference_guards_inference_but_not_probes(home: Path) -> None:
    settings = {"token": TOKEN, "token_for_inference": True}
    with running_server(home, models=("digits",), **settings) as server:
        with http_client(server) as client:
            with pytest.raises(InferenceServerException) as err:
                infer(client)
            assert err.value.status() == "401"
            assert infer(client, headers={"Authorization": f"Bearer {TOKEN}"}) == "1"
            assert client.is_server_live() and client.is_server_ready()
        base = f"http://{server.http_url}"
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert httpx.get(base + path).status_code == 200
        for method, path in (("GET", "/v2"), ("GET", "/v2/models/digits"), ("POST", INFER)):
            answer = httpx.request(method, base + path, json=json_request(images(1)))
            assert_error(answer, 401, "Authorization: Bearer TOKEN")
        answer = httpx.post(base + INFER, json=json_request(images(1)), headers=AUTH)
        assert answer.status_code == 200, answer.text


certificate = test_grpc_security.certificate


def test_tls(home: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with running_server(home, models=("digits",), tls_cert=cert, tls_key=key) as server:
        url = f"localhost:{server.endpoints.http_port}"
        context = ssl.create_default_context(cafile=str(cert))
        with triton_http.InferenceServerClient(
            url, ssl=True, ssl_context_factory=lambda: context
        ) as client:
            assert infer(client) == "1"
        assert httpx.get(f"https://{url}/v2/health/ready", verify=context).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{url}/v2/health/ready", timeout=5)  # plaintext is not served
