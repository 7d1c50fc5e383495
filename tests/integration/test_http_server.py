"""`kiln serve`'s KServe v2 HTTP/REST endpoint through the stock `tritonclient.http` client and
through plain (curl-style) requests, against a real server on port 0.

One server for the module, test_grpc_server.py's fixture: model `digits` (production ->
version 2, version 1 pinned beside it) and a registered but unserved model `letters`, model
control on. Every answer over HTTP is checked against the gRPC answer of the same server.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.integration import test_grpc_server
from tests.integration.grpc_harness import (
    INPUT,
    OUTPUT,
    RunningServer,
    images,
    reference_outputs,
)
from tests.integration.http_harness import (
    INFER,
    assert_error,
    http_input,
    json_request,
    logits,
    plain_client,
)
from tests.integration.test_grpc_server import infer_input

server = test_grpc_server.server
"""The gRPC tests' server (module scope: one started for this module too)."""


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[triton_http.InferenceServerClient]:
    with triton_http.InferenceServerClient(server.http_url, concurrency=4) as c:
        yield c


@pytest.fixture(scope="module")
def plain(server: RunningServer) -> Iterator[httpx.Client]:
    with plain_client(server) as c:
        yield c


def grpc_logits(server: RunningServer, x: np.ndarray, version: str = "") -> np.ndarray:
    with server.client() as grpc_client:
        result = grpc_client.infer("digits", [infer_input(x)], model_version=version)
        answer: np.ndarray = result.as_numpy(OUTPUT)
    return answer


# -- tritonclient.http --------------------------------------------------------------------------


test_live_and_ready = test_grpc_server.test_live_and_ready
"""The gRPC test's calls, with this module's `client`: tritonclient.http's."""


def test_an_unknown_model_is_not_ready(client: triton_http.InferenceServerClient) -> None:
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready("no-such-model", "1")


def test_server_metadata_lists_the_binary_extension(
    client: triton_http.InferenceServerClient,
) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "kiln" and metadata["version"]
    assert metadata["extensions"] == [
        "model_repository",
        "model_configuration",
        "statistics",
        "parameters",
        "binary_tensor_data",
    ]


def test_model_metadata(client: triton_http.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("digits")
    assert metadata == {
        "name": "digits",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get_model_metadata("digits", "1")["name"] == "digits"


def test_model_config_is_triton_json(client: triton_http.InferenceServerClient) -> None:
    config = client.get_model_config("digits")
    assert config["name"] == "digits"
    assert config["max_batch_size"] == 32
    # Numbers, not protobuf JSON's strings of int64: perf_analyzer reads them as numbers.
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        (INPUT, "TYPE_FP32", [1, 28, 28])
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        (OUTPUT, "TYPE_FP32", [10])
    ]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    assert config["version_policy"] == {"specific": {"versions": [1, 2]}}
    assert config["instance_group"][0]["count"] == 1


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_grpc_answer(
    server: RunningServer, client: triton_http.InferenceServerClient, binary: bool
) -> None:
    x = images(5, seed=11)
    outputs = [triton_http.InferRequestedOutput(OUTPUT, binary_data=binary)]
    result = client.infer("digits", [http_input(x, binary=binary)], outputs=outputs)
    response = result.get_response()
    assert response["model_version"] == "2"
    (output,) = response["outputs"]
    assert ("parameters" in output, "data" in output) == (binary, not binary)
    got = result.as_numpy(OUTPUT)
    assert got.dtype == np.float32 and got.shape == (5, 10)
    # The same server over gRPC, to the bit with raw bytes; JSON floats round-trip exactly.
    np.testing.assert_array_equal(got, grpc_logits(server, x))
    np.testing.assert_allclose(got, reference_outputs(server.registry, "digits", 2, x), atol=1e-5)


def test_model_version_selects_a_loaded_version(
    server: RunningServer, client: triton_http.InferenceServerClient
) -> None:
    x = images(2, seed=12)
    result = client.infer("digits", [http_input(x)], model_version="1")
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy(OUTPUT), grpc_logits(server, x, "1"))


def test_request_id_is_echoed_or_assigned(client: triton_http.InferenceServerClient) -> None:
    x = images(1)
    echoed = client.infer("digits", [http_input(x)], request_id="client-42")
    assert echoed.get_response()["id"] == "client-42"
    assigned = client.infer("digits", [http_input(x)]).get_response()["id"]
    other = client.infer("digits", [http_input(x)]).get_response()["id"]
    assert assigned and other and assigned != other


def test_async_infer(server: RunningServer, client: triton_http.InferenceServerClient) -> None:
    batches = {f"a{i}": images(1, seed=i) for i in range(16)}
    pending = [
        client.async_infer("digits", [http_input(x)], request_id=request_id)
        for request_id, x in batches.items()
    ]
    for request in pending:
        result = request.get_result(timeout=30)
        x = batches[result.get_response()["id"]]
        expected = reference_outputs(server.registry, "digits", 2, x)
        np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, atol=1e-5)


def test_requested_outputs(client: triton_http.InferenceServerClient) -> None:
    x = images(1)
    outputs = [triton_http.InferRequestedOutput(OUTPUT)]
    assert client.infer("digits", [http_input(x)], outputs=outputs).as_numpy(OUTPUT).shape == (
        1,
        10,
    )
    unknown = [triton_http.InferRequestedOutput("probs")]
    with pytest.raises(InferenceServerException, match="unknown output 'probs'") as err:
        client.infer("digits", [http_input(x)], outputs=unknown)
    assert err.value.status() == "400"


def test_statistics_count_what_ran(client: triton_http.InferenceServerClient) -> None:
    before = client.get_inference_statistics("digits", "2")["model_stats"][0]
    client.infer("digits", [http_input(images(3))])
    after = client.get_inference_statistics("digits", "2")["model_stats"][0]
    stats, earlier = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] == earlier["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["execution_count"] == before["execution_count"] + 1
    assert stats["compute_infer"]["ns"] > earlier["compute_infer"]["ns"]
    assert any(b["batch_size"] == 3 for b in after["batch_stats"])
    assert after["last_inference"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert [(s["name"], s["version"]) for s in everything] == [("digits", "1"), ("digits", "2")]
    assert [s["version"] for s in client.get_inference_statistics("digits")["model_stats"]] == [
        "1",
        "2",
    ]


def test_repository_index(client: triton_http.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    assert {"name": "digits", "version": "1", "state": "READY", "reason": ""} in index
    assert {"name": "digits", "version": "2", "state": "READY", "reason": ""} in index
    assert {"name": "letters", "version": "", "state": "UNAVAILABLE", "reason": "not loaded"} in (
        index
    )


def test_load_and_unload(server: RunningServer, client: triton_http.InferenceServerClient) -> None:
    client.load_model("letters")
    assert client.is_model_ready("letters")
    x = images(1)
    result = client.infer("letters", [http_input(x)])
    expected = reference_outputs(server.registry, "letters", 1, x)
    np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, atol=1e-5)
    client.unload_model("letters")
    assert not client.is_model_ready("letters")
    with pytest.raises(InferenceServerException, match="'letters' is not served") as err:
        client.infer("letters", [http_input(x)])
    assert err.value.status() == "404"
    assert "POST /v2/repository/models/NAME/load" in err.value.message()
    with pytest.raises(InferenceServerException, match="nothere") as err:
        client.load_model("nothere")
    assert err.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_compressed_requests_and_answers(
    server: RunningServer, client: triton_http.InferenceServerClient, binary: bool
) -> None:
    x = images(3, seed=13)
    outputs = [triton_http.InferRequestedOutput(OUTPUT, binary_data=binary)]
    result = client.infer(
        "digits",
        [http_input(x, binary=binary)],
        outputs=outputs,
        request_compression_algorithm="gzip",
        response_compression_algorithm="gzip",
    )
    np.testing.assert_array_equal(result.as_numpy(OUTPUT), grpc_logits(server, x))


def test_answers_are_gzipped_when_the_client_accepts_it(plain: httpx.Client) -> None:
    body = gzip.compress(httpx.Request("POST", "/", json=json_request(images(1))).read())
    answer = plain.post(
        INFER,
        content=body,
        headers={
            "content-type": "application/json",
            "content-encoding": "gzip",
            "accept-encoding": "gzip",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("content-encoding") == "gzip", answer.headers
    assert logits(answer.json()).shape == (1, 10)  # httpx de-compressed it


# -- plain HTTP (curl) --------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_curl_style_json_infer(server: RunningServer, plain: httpx.Client, nested: bool) -> None:
    x = images(2, seed=14)
    answer = plain.post(INFER, json=json_request(x, nested=nested, request_id="curl-1"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "2", "curl-1")
    np.testing.assert_array_equal(logits(body), grpc_logits(server, x))
    pinned = plain.post("/v2/models/digits/versions/1/infer", json=json_request(x))
    assert pinned.json()["model_version"] == "1"
    np.testing.assert_array_equal(logits(pinned.json()), grpc_logits(server, x, "1"))


def test_curl_style_ids_are_assigned_and_returned(plain: httpx.Client) -> None:
    ids = {plain.post(INFER, json=json_request(images(1))).json()["id"] for _ in range(3)}
    assert len(ids) == 3 and all(isinstance(i, str) and i for i in ids)


def test_curl_style_binary_output_for_a_json_request(
    server: RunningServer, plain: httpx.Client
) -> None:
    x = images(1, seed=15)
    answer = plain.post(INFER, json=json_request(x, parameters={"binary_data_output": True}))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    header = httpx.Response(200, content=answer.content[:length]).json()
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 40}
    raw = np.frombuffer(answer.content[length:], "<f4").reshape(1, 10)
    np.testing.assert_array_equal(raw, grpc_logits(server, x))


def test_curl_style_health_metadata_config_stats_and_index(plain: httpx.Client) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"):
        answer = plain.get(path)
        assert (answer.status_code, answer.content) == (200, b""), path
    assert plain.get("/v2/models/digits/versions/1/ready").status_code == 200
    assert_error(plain.get("/v2/models/digits/versions/7/ready"), 503, "is not ready")
    assert_error(plain.get("/v2/models/letters/ready"), 503, "is not ready")
    assert "binary_tensor_data" in plain.get("/v2").json()["extensions"]
    assert plain.get("/v2/models/digits").json()["versions"] == ["1", "2"]
    assert plain.get("/v2/models/digits/versions/1").json()["name"] == "digits"
    assert plain.get("/v2/models/digits/config").json()["max_batch_size"] == 32
    stats = plain.get("/v2/models/digits/versions/2/stats").json()["model_stats"]
    assert [s["version"] for s in stats] == ["2"]
    assert len(plain.get("/v2/models/stats").json()["model_stats"]) == 2
    index = plain.post("/v2/repository/index").json()
    assert {e["name"] for e in index} == {"digits", "letters"}
    ready = plain.post("/v2/repository/index", json={"ready": True}).json()
    assert {e["name"] for e in ready} == {"digits"}
    assert_error(plain.get("/v2/models/nothere"), 404, "'nothere'")
