"""Support for the HTTP tests: `tritonclient.http` inputs, curl-style requests with a plain
HTTP client, and the rules every HTTP error answer keeps.

The servers are `grpc_harness.running_server`'s (gRPC and HTTP from one core); these helpers
only build what the HTTP side sends and check what it answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.http as triton_http

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import (
    INPUT,
    OUTPUT,
    RunningServer,
    images,
    reference_outputs,
    register,
)
from tests.integration.grpc_hostile.calls import assert_clean

INFER = "/v2/models/digits/infer"
PATH_LEAKS = ("/tmp/", "/home/", "site-packages", '.py"', ".py:", "platform/kiln")
"""What shows a server's files: none of it may reach a client."""


def digits_home(root: Path, versions: int = 1) -> Path:
    """`root/home`, a KILN_HOME with digits:1..`versions` (seeds 1..), production -> 1."""
    home = root / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        for seed in range(1, versions + 1):
            register(registry, root, "digits", seed=seed, alias="production" if seed == 1 else None)
    return home


def http_input(x: np.ndarray, *, binary: bool = True, name: str = INPUT) -> triton_http.InferInput:
    """`x` as a tritonclient.http input: raw bytes after the JSON (the binary extension,
    tritonclient's default) or JSON `data` (`binary=False`)."""
    tensor = triton_http.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def json_request(
    x: np.ndarray, *, nested: bool = False, request_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A curl-style KServe v2 JSON request for `x`: `data` flat or nested (row-major)."""
    data = x.tolist() if nested else x.ravel().tolist()
    document: dict[str, Any] = {
        "inputs": [{"name": INPUT, "shape": list(x.shape), "datatype": "FP32", "data": data}],
        **fields,
    }
    if request_id is not None:
        document["id"] = request_id
    return document


def plain_client(server: RunningServer) -> httpx.Client:
    """A plain HTTP client of `server`'s HTTP endpoint (what curl does)."""
    return httpx.Client(base_url=f"http://{server.http_url}", timeout=30)


def logits(answer: dict[str, Any]) -> np.ndarray:
    """The `logits` output of a JSON infer answer."""
    (output,) = (o for o in answer["outputs"] if o["name"] == OUTPUT)
    assert output["datatype"] == "FP32"
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def assert_error(response: httpx.Response, status: int, says: str) -> str:
    """`response` is a KServe error: `status`, `{"error": message}` with `says` in the
    message, nothing of the server's internals; returns the message."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and says in message, message
    assert_no_internals(response.text)
    return message


def assert_no_internals(text: str) -> None:
    assert_clean(text)
    assert not any(leak in text for leak in PATH_LEAKS), text


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The body and headers tritonclient.http sends for `x` (the binary extension: compact,
    so it fits where the JSON form would pass a small body limit)."""
    content, json_size = triton_http.InferenceServerClient.generate_request_body([http_input(x)])
    headers = {"content-type": "application/octet-stream"}
    if json_size is not None:
        headers["inference-header-content-length"] = str(json_size)
    return content, headers


def assert_serves(server: RunningServer, client: httpx.Client, version: int = 1) -> None:
    """A good request still gets the right answer."""
    x = images(1, seed=77)
    content, headers = binary_request(x)
    answer = client.post(INFER, content=content, headers=headers)
    assert answer.status_code == 200, answer.text
    length = answer.headers.get("inference-header-content-length")
    result = triton_http.InferenceServerClient.parse_response_body(
        answer.content, header_length=None if length is None else int(length)
    )
    expected = reference_outputs(server.registry, "digits", version, x)
    np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, atol=1e-5)
