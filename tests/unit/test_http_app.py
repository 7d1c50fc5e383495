"""`HttpApp`, the transport-neutral KServe v2 REST handler, over a real `ServingCore` on a real
registry, without any HTTP server: the answers whose states a running server passes through
too quickly to catch (not ready before start, draining at shutdown) and the request forms a
client library does not send (HEAD, odd paths)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kiln.registry
from kiln.registry import Registry
from kiln.serving.core import ServingCore
from kiln.serving.http.app import HttpApp, HttpRequest, HttpResponse
from kiln.serving.repository import RegistryRepository
from kiln.serving.settings import ServingSettings
from kiln.settings import Settings
from tests.integration.grpc_harness import images, reference_outputs, register
from tests.integration.http_harness import json_request

JSON = {"content-type": "application/json"}


@pytest.fixture
def digits(kiln_home: Path, tmp_path: Path) -> Iterator[Registry]:
    """A registry with digits:1 in production (a real ONNX engine)."""
    with kiln.registry.open(settings=Settings(home=kiln_home)) as opened:
        register(opened, tmp_path, "digits", seed=1)
        yield opened


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    opened = asyncio.new_event_loop()
    try:
        yield opened
    finally:
        opened.close()


def error(response: HttpResponse) -> str:
    assert dict(response.headers)["content-type"] == "application/json"
    message: str = json.loads(response.body)["error"]
    return message


def test_ready_only_once_started_and_refusing_while_stopping(
    digits: Registry, loop: asyncio.AbstractEventLoop
) -> None:
    def call(method: str, path: str, body: object = None) -> HttpResponse:
        content = b"" if body is None else json.dumps(body).encode()
        headers = JSON if body is not None else {}
        return loop.run_until_complete(app.handle(HttpRequest(method, path, headers, content)))

    settings = ServingSettings(models=("digits",), threads=1, http_port=0)
    core = ServingCore(RegistryRepository(digits), settings)
    app = HttpApp(core, settings)
    assert call("GET", "/v2/health/live").status == 200
    not_ready = call("GET", "/v2/health/ready")
    assert not_ready.status == 503 and error(not_ready) == "the server is not ready"
    assert ("retry-after", "1") in not_ready.headers

    loop.run_until_complete(core.start(settings.models))
    assert call("GET", "/v2/health/ready").status == 200
    assert call("HEAD", "/v2/models/digits/ready").status == 200
    x = images(1, seed=4)
    answer = call("POST", "/v2/models/digits/infer", json_request(x))
    assert answer.status == 200, answer.body
    (output,) = json.loads(answer.body)["outputs"]
    np.testing.assert_allclose(
        np.asarray(output["data"], np.float32).reshape(1, 10),
        reference_outputs(digits, "digits", 1, x),
        atol=1e-5,
    )

    core.refuse_new()  # what SIGTERM does first
    assert call("GET", "/v2/health/ready").status == 503
    refused = call("POST", "/v2/models/digits/infer", json_request(x))
    assert refused.status == 503, refused.body
    assert "shutting down" in error(refused)
    assert ("retry-after", "1") in refused.headers
    loop.run_until_complete(core.stop())
    stopped = call("GET", "/v2/health/live")
    assert stopped.status == 503 and error(stopped) == "the server is not live"
