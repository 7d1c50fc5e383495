"""Bad HTTP requests against a real server: each kind of mistake gets the right status and a
`{"error": ...}` message naming the problem, with nothing of the server's internals, and the
server keeps answering good requests afterwards (test_grpc_bad_requests.py's, over REST).

Then a hypothesis property over any body a client can send to the infer endpoint: the answer
is 200 or a client error with a KServe error body, never a server error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiln.serving.codec import DATATYPES
from tests.integration.grpc_harness import INPUT, RunningServer, images, running_server
from tests.integration.grpc_hostile.calls import HUGE_NUMBER
from tests.integration.http_harness import (
    INFER,
    assert_error,
    assert_no_internals,
    assert_serves,
    binary_request,
    digits_home,
    plain_client,
)

MAX_MESSAGE = 16384
"""The body limit here: a binary one-image request (3,136 bytes of pixels) fits, five don't."""
MAX_JSON = 8192
"""The JSON limit: a one-image request with `data` of zeros (about 1,700 bytes) fits, one of
ten-digit numbers does not."""
ROW = [1, 1, 28, 28]
PIXELS = 784
OCTET = {"content-type": "application/octet-stream"}


@dataclass(frozen=True)
class Bad:
    """A request, the status it must get and words its message must contain."""

    body: bytes
    status: int
    says: str
    headers: dict[str, str] = field(default_factory=dict)
    path: str = INFER
    method: str = "POST"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = digits_home(tmp_path_factory.mktemp("http-bad"))
    limits = {"max_message_bytes": MAX_MESSAGE, "max_json_bytes": MAX_JSON}
    with running_server(home, max_batch_size=8, **limits) as running:
        yield running


@pytest.fixture(scope="module")
def plain(server: RunningServer) -> Iterator[httpx.Client]:
    with plain_client(server) as client:
        yield client


def body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    """A compact JSON request."""
    return json.dumps({"inputs": list(inputs), **fields}, separators=(",", ":")).encode()


def tensor(data: Any = None, shape: list[int] = ROW, datatype: str = "FP32", **extra: Any) -> Any:
    """One JSON input; `data` defaults to zeros of `shape`."""
    count = int(np.prod(shape))
    return {
        "name": INPUT,
        "shape": shape,
        "datatype": datatype,
        "data": [0] * count if data is None else data,
        **extra,
    }


def binary(raw: bytes, size: int | None = None, header_length: int | None = None) -> Bad:
    """A binary-extension request of `raw` bytes declaring `size` bytes (a stub `Bad`)."""
    parameters = {"binary_data_size": len(raw) if size is None else size}
    header = json.dumps(
        {"inputs": [{"name": INPUT, "shape": ROW, "datatype": "FP32", "parameters": parameters}]}
    ).encode()
    length = len(header) if header_length is None else header_length
    headers = {**OCTET, "inference-header-content-length": str(length)}
    return Bad(header + raw, 0, "", headers)


def with_expectation(request: Bad, status: int, says: str) -> Bad:
    return Bad(request.body, status, says, request.headers, request.path, request.method)


PIXEL_BYTES = bytes(PIXELS * 4)
MISTAKES = {
    "malformed JSON": Bad(b'{"inputs": [', 400, "is not valid JSON: Expecting value"),
    "not UTF-8": Bad(b'{"inputs": "\xff\xfe"}', 400, "is not UTF-8 text"),
    "JSON array": Bad(b"[1, 2]", 400, "the request body is a JSON array"),
    "no inputs": Bad(b"{}", 400, "the request has no `inputs`"),
    "shape vs data length": Bad(
        body(tensor(data=[0.5] * 10)), 400, "shape [1, 1, 28, 28] needs 784 elements"
    ),
    "ragged nested data": Bad(
        body(tensor(data=[[0.0] * 392, [0.0] * 391], shape=[1, 1, 28, 28])), 400, "ragged"
    ),
    "unknown datatype name": Bad(body(tensor(datatype="FLOAT32")), 400, "unknown datatype"),
    "datatype the model does not take": Bad(
        body(tensor(datatype="INT32")), 400, "has datatype INT32, but the model expects FP32"
    ),
    "strings in FP32 data": Bad(
        body(tensor(data=["a"] * PIXELS)), 400, "its `data` must be numbers, but it holds strings"
    ),
    "booleans in FP32 data": Bad(body(tensor(data=[True] * PIXELS)), 400, "holds true/false"),
    "NaN in the data": Bad(
        body(tensor(data=[float("nan")] * PIXELS)), 400, "holds NaN or infinite values"
    ),
    "shape the model does not take": Bad(
        body(tensor(shape=[1, 5])), 400, "but the model expects [-1, 1, 28, 28]"
    ),
    "negative dimension": Bad(body(tensor(data=[], shape=[-1, 784])), 400, "must be >= 0"),
    "unknown output": Bad(body(tensor(), outputs=[{"name": "probs"}]), 400, "unknown output"),
    "unsupported output parameter": Bad(
        body(tensor(), outputs=[{"name": "logits", "parameters": {"classification": 3}}]),
        400,
        "does not support",
    ),
    "id that is no string": Bad(body(tensor(), id=7), 400, "`id` must be a string"),
    "a number past Python's digit limit": Bad(
        body(tensor(data=[7], shape=[1])).replace(b"[7]", f"[{HUGE_NUMBER}]".encode()),
        400,
        "a number with too many digits to parse",
    ),
    "an id that is a lone surrogate": Bad(
        body(tensor(), id="\ud800"), 400, "`id` holds a lone UTF-16 surrogate"
    ),
    "BYTES data with a lone surrogate": Bad(
        body(tensor(data=["ok", "\udfff"], shape=[2], datatype="BYTES")),
        400,
        "input 'input' holds a lone UTF-16 surrogate",
    ),
    "unknown model": Bad(
        body(tensor()), 404, "model 'nope' is not served here", path="/v2/models/nope/infer"
    ),
    "unknown version": Bad(
        body(tensor()), 404, "version 9", path="/v2/models/digits/versions/9/infer"
    ),
    "binary size past the body": with_expectation(
        binary(bytes(100), size=len(PIXEL_BYTES)), 400, "declares binary_data_size 3136"
    ),
    "binary bytes beyond the sizes": with_expectation(
        binary(PIXEL_BYTES + bytes(64), size=len(PIXEL_BYTES)), 400, "they must agree"
    ),
    "header length past the body": with_expectation(
        binary(PIXEL_BYTES, header_length=99_999), 400, "Inference-Header-Content-Length says"
    ),
    "header length no number": Bad(
        b"{}", 400, "not a byte count", {"inference-header-content-length": "ten"}
    ),
    "oversized body": Bad(bytes(MAX_MESSAGE + 1), 413, f"larger than {MAX_MESSAGE} bytes"),
    "JSON over max_json_bytes": Bad(
        body(tensor(data=[0.1234567891] * PIXELS)), 413, f"at most {MAX_JSON} are parsed"
    ),
    "multipart form": Bad(
        b"--x\r\n\r\n--x--", 415, "'multipart/form-data'", {"content-type": "multipart/form-data"}
    ),
    "XML": Bad(b"<inputs/>", 415, "send application/json", {"content-type": "application/xml"}),
    "feedback without a request_id": Bad(
        b'{"label": 1}', 400, "`request_id` must be", path="/v2/models/digits/feedback"
    ),
    "index request of the wrong form": Bad(
        b'{"ready": "yes"}', 400, '{"ready": true|false}', path="/v2/repository/index"
    ),
    "unknown path": Bad(b"", 404, "no endpoint '/v2/nothing'", path="/v2/nothing", method="GET"),
    "not KServe v2": Bad(b"", 404, "the KServe v2 paths are", path="/v1/models", method="GET"),
    "an action that is none": Bad(b"{}", 404, "no endpoint", path="/v2/models/digits/explain"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_bad_request_gets_the_right_status_and_message(
    server: RunningServer, plain: httpx.Client, mistake: str
) -> None:
    bad = MISTAKES[mistake]
    answer = plain.request(bad.method, bad.path, content=bad.body, headers=bad.headers)
    assert_error(answer, bad.status, bad.says)
    assert_serves(server, plain)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", INFER, "POST"),
        ("PUT", INFER, "POST"),
        ("POST", "/v2/health/live", "GET, HEAD"),
        ("DELETE", "/v2/models/digits", "GET, HEAD"),
        ("GET", "/v2/repository/index", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(
    server: RunningServer, plain: httpx.Client, method: str, path: str, allow: str
) -> None:
    answer = plain.request(method, path)
    assert_error(answer, 405, f"use {allow.split(',', maxsplit=1)[0]} here, not {method}")
    assert answer.headers["allow"] == allow
    assert_serves(server, plain)


def test_a_good_binary_request_at_the_limits_is_answered(plain: httpx.Client) -> None:
    """The limits refuse what is past them only: the binary one-image request fits both."""
    request = binary(PIXEL_BYTES)
    answer = plain.post(INFER, content=request.body, headers=request.headers)
    assert answer.status_code == 200, answer.text


# -- any body -----------------------------------------------------------------------------------

CLIENT_ERRORS = {400, 404, 413, 415}
texts = st.text(max_size=8) | st.sampled_from(["\ud800", "a\udfffb"])  # lone surrogates too
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
dims = st.integers(-3, 2**40) | st.sampled_from([1, 28, 784, 2**63])


@st.composite
def near_requests(draw: st.DrawFn) -> bytes:
    """Requests with the protocol's fields, each possibly wrong: the mistakes a client makes."""
    shape = draw(st.lists(dims, max_size=5) | st.just(ROW))
    data = draw(
        json_values
        | st.integers(0, 2**32).map(lambda seed: images(1, seed).ravel().tolist())
        | st.just([0] * PIXELS)
    )
    entry: dict[str, Any] = {
        "name": draw(st.sampled_from([INPUT, "x", ""]) | texts),
        "shape": shape,
        "datatype": draw(st.sampled_from(DATATYPES) | texts),
        "data": data,
    }
    for key in draw(st.sets(st.sampled_from(["name", "shape", "datatype", "data"]), max_size=2)):
        del entry[key]
    if draw(st.booleans()):
        entry["parameters"] = draw(json_values)
    document: dict[str, Any] = {"inputs": [entry]}
    for key in draw(st.sets(st.sampled_from(["id", "outputs", "parameters"]))):
        document[key] = draw(json_values)
    return json.dumps(document, allow_nan=True).encode()


bodies = st.one_of(
    st.just(body(tensor())),  # a good one: the headers drawn beside it may still spoil it
    st.binary(max_size=MAX_MESSAGE + 64),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_requests(),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(
            ["application/json", "application/octet-stream", "text/plain", "multipart/form-data"]
        ),
        "inference-header-content-length": st.integers(-2, MAX_MESSAGE + 64).map(str)
        | st.sampled_from(["", "x", "1e3"]),
    },
)
paths = st.sampled_from([INFER, "/v2/models/digits/versions/1/infer", "/v2/models/nope/infer"])


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(content=bodies, sent=headers, path=paths)
def test_any_infer_body_gets_a_client_status_never_a_server_error(
    server: RunningServer, plain: httpx.Client, content: bytes, sent: dict[str, str], path: str
) -> None:
    answer = plain.post(path, content=content, headers=sent)
    event(f"status {answer.status_code}")  # --hypothesis-show-statistics: what was reached
    assert answer.status_code in {200} | CLIENT_ERRORS, (answer.status_code, answer.text[:300])
    if answer.status_code != 200:
        error = answer.json()
        assert isinstance(error, dict) and isinstance(error.get("error"), str), error
        assert_no_internals(error["error"])
    assert plain.get("/v2/health/ready").status_code == 200
    assert_serves(server, plain)


feedback_items = st.fixed_dictionaries(
    {}, optional={"request_id": texts | json_values, "label": json_values, "value": json_values}
)
feedback_bodies = st.one_of(
    json_values,
    feedback_items,
    st.fixed_dictionaries({"items": st.lists(feedback_items | json_values, max_size=4)}),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=feedback_bodies)
def test_any_feedback_body_gets_a_client_status_never_a_server_error(
    server: RunningServer, plain: httpx.Client, document: Any
) -> None:
    answer = plain.post("/v2/models/digits/feedback", content=json.dumps(document).encode())
    event(f"status {answer.status_code}")
    assert answer.status_code in {200, 400}, (answer.status_code, answer.text[:300])
    reply = answer.json()
    if answer.status_code == 200:
        assert set(reply) == {"accepted", "rejected"}
        assert all(isinstance(r["reason"], str) for r in reply["rejected"])
    else:
        assert isinstance(reply.get("error"), str), reply
    assert plain.get("/v2/health/ready").status_code == 200


def test_full_queue_is_429_with_retry_after_and_the_rest_succeed(tmp_path: Path) -> None:
    # As test_grpc_bad_requests.py's flood: every request goes to the engine's thread, so that
    # requests arrive faster than it answers them.
    settings = {"max_batch_size": 1, "max_queue_size": 2, "warmup": False, "inline_idle_us": 0}
    with running_server(digits_home(tmp_path), **settings) as server:
        answers = asyncio.run(_flood(f"http://{server.http_url}", requests=100))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    for refused in (a for a in answers if a.status_code == 429):
        assert_error(refused, 429, "requests queued (the maximum)")
        assert refused.headers["retry-after"] == "1"


async def _flood(url: str, requests: int) -> list[httpx.Response]:
    content, headers = binary_request(images(1))
    limits = httpx.Limits(max_connections=requests)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        calls = (client.post(INFER, content=content, headers=headers) for _ in range(requests))
        return list(await asyncio.gather(*calls))
