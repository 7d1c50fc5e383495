"""Canary and shadow rollouts on a running `kiln serve`: set in the registry, followed live.

Real registry, real gRPC server (port 0), real onnxruntime engines of two tiny classifiers
that compute different logits, the stock Triton client. The server polls every 50 ms; tests
wait on what the server reports (repository index, answers), never for a fixed time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper

import kiln.registry
from kiln.errors import ErrorCode
from kiln.registry import Registry
from kiln.serving.messages import TrafficEvent
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import Route, TrafficSettings, scan_traffic
from tests.conftest import wait_until
from tests.integration.grpc_harness import (
    INPUT,
    OUTPUT,
    images,
    reference_outputs,
    register,
    running_server,
)
from tests.integration.load import BackgroundLoad

POLL: dict[str, Any] = {"models": ("digits",), "poll_interval_s": 0.05}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """digits:1 at production, digits:2 at candidate."""
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
        register(registry, tmp_path, "digits", seed=2, alias="candidate")
    return home


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        yield registry


def _tensor(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _index(client: triton.InferenceServerClient) -> dict[str, dict[str, str]]:
    """The server's index entries of digits, by version."""
    entries = client.get_model_repository_index(as_json=True)["models"]
    return {e.get("version", ""): e for e in entries if e["name"] == "digits"}


def _routing(client: triton.InferenceServerClient, version: str, route: str) -> bool:
    entry = _index(client).get(version, {})
    return entry.get("state") == "READY" and entry.get("reason", "").startswith(route)


def test_canary_answers_its_share_and_says_so(home: Path, registry: Registry) -> None:
    x = images(1, seed=5)
    expected = {v: reference_outputs(registry, "digits", int(v), x) for v in ("1", "2")}
    with running_server(home, **POLL) as server, server.client() as client:
        registry.set_rollout("digits", "canary", percent=30, reason="test")
        assert wait_until(lambda: _routing(client, "2", "canary"), 30, 0.02)

        n, share = 400, 0.30
        answers = {}
        for i in range(n):
            result = client.infer("digits", [_tensor(x)], request_id=f"req-{i}")
            version = result.get_response().model_version
            answers[f"req-{i}"] = version
            np.testing.assert_allclose(result.as_numpy(OUTPUT), expected[version], atol=1e-5)
        canary = sum(v == "2" for v in answers.values())
        sd = math.sqrt(n * share * (1 - share))
        assert abs(canary - n * share) <= 4 * sd, canary
        assert set(answers.values()) == {"1", "2"}

        # The choice is a hash of the request id: a retry lands where the first try did.
        for request_id in list(answers)[:40]:
            again = client.infer("digits", [_tensor(x)], request_id=request_id)
            assert again.get_response().model_version == answers[request_id]
        # A request that names a version is never rerouted.
        pinned = {
            client.infer("digits", [_tensor(x)], model_version="1", request_id=r)
            .get_response()
            .model_version
            for r in answers
            if answers[r] == "2"
        }
        assert pinned == {"1"}

    first: dict[str, TrafficEvent] = {}
    for event in server.traffic:  # the first try of each id (retries and pinned ones follow)
        first.setdefault(event.request.id, event)
    for request_id, version in answers.items():
        event = first[request_id]
        assert str(event.served_version) == version
        assert event.route == (Route.CANARY if version == "2" else Route.PRIMARY)


def test_shadow_answers_reach_only_the_traffic_log(home: Path, registry: Registry) -> None:
    sink = TrafficSink(home, TrafficSettings(flush_interval_s=0.1))
    x = images(2, seed=6)
    ids = [f"shadowed-{i}" for i in range(60)]
    try:
        with running_server(home, also=sink.on_request, **POLL) as server:
            with server.client() as client:
                registry.set_rollout("digits", "shadow", reason="test")
                assert wait_until(lambda: _routing(client, "2", "shadow"), 30, 0.02)
                seen = {
                    client.infer("digits", [_tensor(x)], request_id=r).get_response().model_version
                    for r in ids
                }
            assert seen == {"1"}  # clients only ever get production's answers

            def shadowed() -> set[str]:
                return {e.request.id for e in server.traffic if e.route is Route.SHADOW}

            assert wait_until(lambda: set(ids) <= shadowed(), 30, 0.02)
        assert sink.flush(30)
    finally:
        sink.close()

    frame = scan_traffic(home, "digits").frame.collect()
    rows = frame.filter(frame["request_id"].is_in(ids))
    primary = rows.filter(rows["route"] == "primary")
    shadow = rows.filter(rows["route"] == "shadow")
    assert sorted(primary["request_id"].to_list()) == sorted(ids)
    assert sorted(shadow["request_id"].to_list()) == sorted(ids)
    assert set(primary["version"].to_list()) == {1}
    assert set(shadow["version"].to_list()) == {2}
    assert set(shadow["status"].to_list()) == {"ok"}
    logged = np.asarray(shadow["scores"].to_list()[0], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(logged, reference_outputs(registry, "digits", 2, x), atol=1e-5)


def test_the_canary_follows_its_alias_and_off_unloads_it_under_load(
    tmp_path: Path, home: Path, registry: Registry
) -> None:
    with (
        running_server(home, **POLL) as server,
        server.client() as client,
        BackgroundLoad(server.url, images(1, seed=7)) as load,
    ):
        load.wait_for({"1"})
        registry.set_rollout("digits", "canary", percent=50, reason="test")
        load.wait_for({"1", "2"})
        register(registry, tmp_path, "digits", seed=3, alias="candidate")  # digits:3
        load.wait_for({"1", "3"})
        assert wait_until(lambda: set(_index(client)) == {"1", "3"}, 30, 0.02)
        registry.set_rollout("digits", "off", reason="test")
        assert wait_until(lambda: set(_index(client)) == {"1"}, 30, 0.02)
        load.wait_for({"1"})
        assert not client.is_model_ready("digits", "2")
    assert load.errors == []


def test_promoting_the_canary_routes_everything_to_it_and_rollback_resumes_it(
    home: Path, registry: Registry
) -> None:
    with (
        running_server(home, **POLL) as server,
        server.client() as client,
        BackgroundLoad(server.url, images(1, seed=7)) as load,
    ):
        registry.set_rollout("digits", "canary", percent=50, reason="test")
        load.wait_for({"1", "2"})
        registry.promote("digits:2", "production", gates=[], reason="test")
        load.wait_for({"2"})
        assert wait_until(lambda: set(_index(client)) == {"2"}, 30, 0.02)
        assert "reason" not in _index(client)["2"]
        # Rolling production back while the rollout still runs resumes the canary.
        registry.rollback("digits", reason="test")
        load.wait_for({"1", "2"})
        assert _routing(client, "2", "canary")
    assert load.errors == []


def test_a_candidate_that_cannot_load_leaves_production_serving(
    tmp_path: Path, home: Path, registry: Registry
) -> None:
    garbage = tmp_path / "corrupt.onnx"
    garbage.write_bytes(b"not an onnx model")
    checkpoint = tmp_path / "broken.safetensors"
    checkpoint.write_bytes(b"checkpoint")
    broken = registry.register_version("digits", checkpoint=checkpoint, config={}, metrics={})
    registry.add_artifact("digits", broken.version, kind="onnx", path=garbage)
    registry.promote(broken.ref, "candidate", gates=[], reason="an engine that cannot load")
    with (
        running_server(home, **POLL) as server,
        server.client() as client,
        BackgroundLoad(server.url, images(1, seed=7)) as load,
    ):
        load.wait_for({"1"})
        registry.set_rollout("digits", "canary", percent=100, reason="test")
        assert wait_until(lambda: "cannot load" in _index(client)["1"].get("reason", ""), 30)
        load.wait_for({"1"})
        assert set(_index(client)) == {"1"}
        # Ending the rollout clears the reason.
        registry.set_rollout("digits", "off", reason="test")
        assert wait_until(lambda: "reason" not in _index(client)["1"], 30, 0.02)
    assert load.errors == []
    assert set(load.answers) == {"1"}


def test_events_carry_their_route(home: Path) -> None:
    """The route of an event reaches the log row (TrafficEvent's field, default primary)."""
    from kiln.serving.messages import InferRequest, InferResponse
    from kiln.serving.traffic_hook import traffic_record

    request = InferRequest("digits", {INPUT: images(1)}, id="r")
    response = InferResponse("digits", "2", "r", {OUTPUT: np.zeros((1, 10), np.float32)})
    assert traffic_record(TrafficEvent(request, response, None, None, 10, 2)).route == "primary"
    shadow = TrafficEvent(request, response, None, None, 10, 2, Route.SHADOW)
    assert traffic_record(shadow).route == "shadow"


def _small_image_classifier(path: Path) -> Path:
    """A classifier of (N, 1, 14, 14) images: production's (N, 1, 28, 28) requests do not fit."""
    weights = np.zeros((196, 10), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [INPUT], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], [OUTPUT]),
        ],
        "small",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 1, 14, 14])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_failed_shadow_copies_are_counted_and_never_reach_clients(
    tmp_path: Path, home: Path, registry: Registry
) -> None:
    checkpoint = tmp_path / "small.safetensors"
    checkpoint.write_bytes(b"checkpoint")
    small = registry.register_version("digits", checkpoint=checkpoint, config={}, metrics={})
    onnx_path = _small_image_classifier(tmp_path / "small.onnx")
    registry.add_artifact("digits", small.version, kind="onnx", path=onnx_path)
    registry.promote(small.ref, "candidate", gates=[], reason="rejects production's inputs")
    version = str(small.version)
    ids = [f"refused-{i}" for i in range(20)]
    with running_server(home, **POLL) as server, server.client() as client:
        registry.set_rollout("digits", "shadow", reason="test")
        assert wait_until(lambda: _routing(client, version, "shadow"), 30, 0.02)
        for request_id in ids:
            result = client.infer("digits", [_tensor(images(1))], request_id=request_id)
            assert result.get_response().model_version == "1"
        metrics_url = f"http://127.0.0.1:{server.endpoints.metrics_port}/metrics"
        metrics = httpx.get(metrics_url, timeout=10).text

    refused = f'kiln_shadow_requests_total{{model="digits",outcome="refused",version="{version}"}}'
    assert f"{refused} 20.0" in metrics
    shadow = [e for e in server.traffic if e.route is Route.SHADOW]
    assert sorted(e.request.id for e in shadow) == sorted(ids)
    assert {e.served_version for e in shadow} == {small.version}
    assert all(e.response is None and e.error is not None for e in shadow)
    assert {e.error.code for e in shadow if e.error} == {ErrorCode.INVALID_ARGUMENT}
    primary = [e for e in server.traffic if e.route is Route.PRIMARY and e.request.id in ids]
    assert len(primary) == len(ids) and all(e.error is None for e in primary)
