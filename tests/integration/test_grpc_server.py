"""`kiln serve`'s gRPC API through the stock Triton client, against a real server on port 0.

One server for the module: model `digits` (production -> version 2, version 1 pinned beside it)
and a registered but unserved model `letters`, in a real registry with real ONNX engines. Model
control (load/unload) is enabled, as `kiln serve --model-control` does.
"""

from __future__ import annotations

import queue
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import (
    INPUT,
    OUTPUT,
    RunningServer,
    images,
    reference_outputs,
    register,
    running_server,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("grpc")
    home = root / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, root, "digits", seed=1, alias=None)
        register(registry, root, "digits", seed=2)
        register(registry, root, "letters", seed=3)
    with running_server(home, models=("digits", "digits:1"), model_control=True) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    with server.client() as c:
        yield c


def infer_input(x: np.ndarray, name: str = INPUT) -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_live_and_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "7")
    assert not client.is_model_ready("letters")


def test_server_metadata_lists_only_implemented_extensions(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "kiln"
    assert list(metadata.extensions) == [
        "model_repository",
        "model_configuration",
        "statistics",
        "parameters",
    ]


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["name"] == "digits"
    assert metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {"name": INPUT, "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    ]
    assert metadata["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": ["-1", "10"]}]


def test_model_config_is_a_valid_triton_config(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("digits").config
    assert config.name == "digits"
    assert config.max_batch_size == 32
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        (INPUT, triton.model_config_pb2.TYPE_FP32, [1, 28, 28])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [(OUTPUT, [10])]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert config.instance_group[0].count == 1


def test_infer_equals_the_in_process_engine(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    x = images(5, seed=11)
    result = client.infer("digits", [infer_input(x)])
    response = result.get_response()
    assert response.model_version == "2"
    np.testing.assert_allclose(
        result.as_numpy(OUTPUT), reference_outputs(server.registry, "digits", 2, x), atol=1e-5
    )


def test_model_version_selects_a_loaded_version(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    x = images(2, seed=12)
    result = client.infer("digits", [infer_input(x)], model_version="1")
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(
        result.as_numpy(OUTPUT), reference_outputs(server.registry, "digits", 1, x), atol=1e-5
    )


def test_request_id_is_echoed_or_assigned(client: triton.InferenceServerClient) -> None:
    x = images(1)
    echoed = client.infer("digits", [infer_input(x)], request_id="client-42")
    assert echoed.get_response().id == "client-42"
    assigned = client.infer("digits", [infer_input(x)]).get_response().id
    other = client.infer("digits", [infer_input(x)]).get_response().id
    assert assigned and other and assigned != other


def test_async_infer(server: RunningServer, client: triton.InferenceServerClient) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    batches = {f"a{i}": images(1, seed=i) for i in range(16)}
    for request_id, x in batches.items():
        client.async_infer(
            "digits",
            [infer_input(x)],
            callback=lambda result, error: results.put((result, error)),
            request_id=request_id,
            client_timeout=30,
        )
    got = [results.get(timeout=30) for _ in batches]
    assert [error for _, error in got] == [None] * len(batches)
    for result, _ in got:
        x = batches[result.get_response().id]
        expected = reference_outputs(server.registry, "digits", 2, x)
        np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, atol=1e-5)


def test_stream_infer(client: triton.InferenceServerClient) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(4):
            client.async_stream_infer(
                "digits", [infer_input(images(1, seed=i))], request_id=f"s{i}"
            )
        client.async_stream_infer("nope", [infer_input(images(1))], request_id="bad")
        got = [results.get(timeout=30) for _ in range(5)]
    finally:
        client.stop_stream()
    ids = sorted(r.get_response().id for r, e in got if e is None)
    assert ids == ["s0", "s1", "s2", "s3"]
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1
    assert "'nope' is not served" in errors[0].message()


def test_requested_outputs(client: triton.InferenceServerClient) -> None:
    x = images(1)
    result = client.infer("digits", [infer_input(x)], outputs=[triton.InferRequestedOutput(OUTPUT)])
    assert result.as_numpy(OUTPUT).shape == (1, 10)
    with pytest.raises(InferenceServerException, match="unknown output 'probs'") as err:
        client.infer("digits", [infer_input(x)], outputs=[triton.InferRequestedOutput("probs")])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_typed_contents_in_a_hand_built_request(server: RunningServer) -> None:
    x = images(2, seed=5)
    request = service_pb2.ModelInferRequest(model_name="digits", id="typed-1")
    tensor = request.inputs.add(name=INPUT, datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed-1"
    assert response.outputs[0].name == OUTPUT
    assert response.outputs[0].datatype == "FP32"
    assert list(response.outputs[0].shape) == [2, 10]
    assert not response.outputs[0].HasField("contents")  # outputs are always raw
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(
        logits, reference_outputs(server.registry, "digits", 2, x), atol=1e-5
    )


def test_statistics_count_what_ran(client: triton.InferenceServerClient) -> None:
    before = client.get_inference_statistics("digits", "2").model_stats[0]
    client.infer("digits", [infer_input(images(3))])
    after = client.get_inference_statistics("digits", "2").model_stats[0]
    stats = after.inference_stats
    assert stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 3
    assert after.execution_count == before.execution_count + 1
    assert stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert any(b.batch_size == 3 for b in after.batch_stats)
    assert after.last_inference > 0
    everything = client.get_inference_statistics().model_stats
    assert [(s.name, s.version) for s in everything] == [("digits", "1"), ("digits", "2")]


def test_repository_index_lists_registered_models_with_their_state(
    client: triton.InferenceServerClient,
) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "digits", "version": "1", "state": "READY"} in index
    assert {"name": "digits", "version": "2", "state": "READY"} in index
    assert {"name": "letters", "state": "UNAVAILABLE", "reason": "not loaded"} in index
    ready = client.get_model_repository_index(as_json=True)["models"]
    assert all(m["name"] != "letters" or m["state"] != "READY" for m in ready)


def test_load_and_unload(server: RunningServer, client: triton.InferenceServerClient) -> None:
    client.load_model("letters")
    assert client.is_model_ready("letters")
    x = images(1)
    result = client.infer("letters", [infer_input(x)])
    np.testing.assert_allclose(
        result.as_numpy(OUTPUT), reference_outputs(server.registry, "letters", 1, x), atol=1e-5
    )
    client.unload_model("letters")
    assert not client.is_model_ready("letters")
    with pytest.raises(InferenceServerException, match="'letters' is not served") as err:
        client.infer("letters", [infer_input(x)])
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_unload_reads_references_as_load_does(client: triton.InferenceServerClient) -> None:
    """By the registry's rules: an alias is refused, a malformed name is named as such, and a
    version that is not loaded lists those that are, with how to load it."""
    cases = (
        ("digits@production", "INVALID_ARGUMENT", "not an alias"),
        ("Digits", "INVALID_ARGUMENT", "did you mean 'digits'"),
        ("digits:9", "NOT_FOUND", "loaded versions: "),
        ("digits:9", "NOT_FOUND", "RepositoryModelLoad"),
    )
    for text, status, says in cases:
        with pytest.raises(InferenceServerException) as err:
            client.unload_model(text)
        assert err.value.status() == f"StatusCode.{status}", err.value.message()
        assert says in err.value.message(), err.value.message()
    assert client.is_model_ready("digits")


def test_load_of_an_unknown_model_names_what_exists(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="nothere") as err:
        client.load_model("nothere")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_health_checks_server_services_and_models(server: RunningServer) -> None:
    with grpc.insecure_channel(server.url) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check

        def status(service: str) -> int:
            return check(health_pb2.HealthCheckRequest(service=service)).status

        serving = health_pb2.HealthCheckResponse.SERVING
        assert status("") == serving
        assert status("inference.GRPCInferenceService") == serving
        assert status("kiln.v1.Feedback") == serving
        assert status("digits") == serving
        assert status("digits:1") == serving
        with pytest.raises(grpc.RpcError) as err:
            status("unknown-model")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_services(server: RunningServer) -> None:
    with grpc.insecure_channel(server.url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
        ]
        listed, inference, health = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert names == {
        "inference.GRPCInferenceService",
        "kiln.v1.Feedback",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert inference.file_descriptor_response.file_descriptor_proto
    assert health.file_descriptor_response.file_descriptor_proto


def test_traffic_hook_sees_each_request_once(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    seen = len(server.traffic)
    client.infer("digits", [infer_input(images(2))], request_id="traffic-1")
    with pytest.raises(InferenceServerException):
        client.infer("digits", [infer_input(images(1), name="wrong")], request_id="traffic-2")
    ok, failed = server.traffic[seen:]
    assert ok.request.id == "traffic-1" and ok.response is not None and ok.error is None
    assert ok.served_version == 2 and ok.timings is not None and ok.timings.batch_size == 2
    assert ok.response.outputs[OUTPUT].shape == (2, 10)
    assert failed.request.id == "traffic-2" and failed.response is None
    assert failed.error is not None and "unexpected input 'wrong'" in failed.error.message


def test_feedback_reaches_the_hook(server: RunningServer) -> None:
    from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2, feedback_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        stub = feedback_pb2_grpc.FeedbackStub(channel)
        stub.SubmitFeedback(
            feedback_pb2.SubmitFeedbackRequest(
                item=feedback_pb2.FeedbackItem(request_id="r-1", label=7, model_name="digits")
            )
        )
        batch = stub.SubmitFeedbackBatch(
            feedback_pb2.SubmitFeedbackBatchRequest(
                items=[
                    feedback_pb2.FeedbackItem(request_id="r-2", label=3),
                    feedback_pb2.FeedbackItem(request_id="", label=3),
                    feedback_pb2.FeedbackItem(request_id="r-4", label=-1),
                ]
            )
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitFeedback(
                feedback_pb2.SubmitFeedbackRequest(item=feedback_pb2.FeedbackItem(label=1))
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert batch.accepted == 1
    assert [
        (r.index, "request_id" in r.reason or "negative" in r.reason) for r in batch.rejected
    ] == [
        (1, True),
        (2, True),
    ]
    assert [(f.request_id, f.label, f.model) for f in server.feedback[-2:]] == [
        ("r-1", 7, "digits"),
        ("r-2", 3, ""),
    ]


def test_metrics_endpoint(server: RunningServer, client: triton.InferenceServerClient) -> None:
    client.infer("digits", [infer_input(images(1))])
    port = server.endpoints.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'kiln_inference_success_total{model="digits",version="2"}' in text
    assert (
        'kiln_inference_request_duration_seconds_bucket{le="0.001",model="digits",version="2"}'
        in text
    )
    assert 'kiln_inference_batch_size_count{model="digits",version="2"}' in text
    assert 'kiln_model_state{model="digits",state="ready",version="1"} 1.0' in text
    assert 'kiln_model_state{model="digits",state="loading",version="1"} 0.0' in text


def test_unimplemented_rpcs_say_so(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.get_system_shared_memory_status()
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"
