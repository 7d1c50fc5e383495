"""Serving strings: a text version answers a BYTES tensor of UTF-8 strings, tokenised by the
server with the version's own tokenizer, exactly as the in-process engine answers the same
texts tokenised in-process; pre-tokenised INT64 inputs are answered too; a hot swap under
load moves model and tokenizer together with no failed request.

Every call goes through a real `kiln serve` stack (`grpc_harness.running_server`) and the
stock `tritonclient.grpc` client.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

import kiln.registry
from kiln.compile import CompileOptions, compile_version
from kiln.errors import ArtifactNotFound
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.text import TextTokenizer
from kiln.traffic import TrafficSettings, scan_traffic
from kiln_engines import load
from tests.conftest import wait_until
from tests.integration.grpc_harness import RunningServer, running_server
from tests.integration.text_models import train_text_version
from tests.integration.text_serving_models import (
    engine_logits,
    register_text_version,
    tokenizer,
)

Served = tuple[RunningServer, TextTokenizer]

TEXTS = [
    "smart",
    "a gripping, beautifully acted film with a sharp script",
    "the plot drags and the jokes fall flat, dull, predictable and far too long, a mess",
    "ünïcödé and emoji 🎬 are fine too",
]
"""Strings of very different lengths (the third is longer than max_length tokens)."""


def _text_input(texts: list[str], shape: list[int] | None = None) -> triton.InferInput:
    tensor = triton.InferInput("text", shape or [len(texts)], "BYTES")
    array = np.array([t.encode() for t in texts], dtype=object)
    tensor.set_data_from_numpy(array.reshape(shape or [len(texts)]))
    return tensor


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    home = tmp_path / "home"
    text_tokenizer = tokenizer()
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register_text_version(registry, tmp_path, "reviews", text_tokenizer, seed=1)
    with running_server(home, models=("reviews",)) as server:
        yield server, text_tokenizer


def test_strings_are_answered_as_the_engine_answers_their_tokens(served: Served) -> None:
    server, text_tokenizer = served
    with server.client() as client:
        result = client.infer("reviews", [_text_input(TEXTS)])
        single = [client.infer("reviews", [_text_input([t])]).as_numpy("logits") for t in TEXTS]
    expected = engine_logits(server.registry, "reviews", 1, text_tokenizer, TEXTS)
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
    # Padding to the batch's longest changes no row's answer (the model masks it).
    np.testing.assert_allclose(np.concatenate(single), expected, atol=1e-5)
    stats = server.traffic[0].response.text_stats
    encoded = text_tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(stats.tokens, encoded.lengths)
    np.testing.assert_array_equal(stats.unknown, encoded.unknown)
    np.testing.assert_array_equal(stats.truncated, encoded.truncated)
    assert stats.truncated[2] and not stats.truncated[0]
    assert stats.tokens[2] == text_tokenizer.max_length


def test_column_shaped_strings_and_typed_bytes_contents_are_answered(served: Served) -> None:
    server, text_tokenizer = served
    expected = engine_logits(server.registry, "reviews", 1, text_tokenizer, TEXTS)
    with server.client() as client:
        column = client.infer("reviews", [_text_input(TEXTS, [len(TEXTS), 1])])
    np.testing.assert_allclose(column.as_numpy("logits"), expected, atol=1e-5)

    # tritonclient always sends raw contents; a KServe v2 client may send typed ones instead.
    request = service_pb2.ModelInferRequest(model_name="reviews")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
    tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    with grpc.insecure_channel(server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(len(TEXTS), 2)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_pre_tokenised_inputs_are_answered_and_counted(served: Served) -> None:
    server, text_tokenizer = served
    encoded = text_tokenizer.encode(TEXTS)
    inputs = []
    for name, array in encoded.inputs().items():
        tensor = triton.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with server.client() as client:
        result = client.infer("reviews", inputs)
    expected = engine_logits(server.registry, "reviews", 1, text_tokenizer, TEXTS)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
    stats = server.traffic[0].response.text_stats
    np.testing.assert_array_equal(stats.tokens, encoded.lengths)
    np.testing.assert_array_equal(stats.unknown, encoded.unknown)
    assert not stats.truncated.any()  # the server cannot know what the client cut


def test_metadata_and_config_describe_the_string_input(served: Served) -> None:
    server, text_tokenizer = served
    with server.client() as client:
        metadata = client.get_model_metadata("reviews", as_json=True)
        config = client.get_model_config("reviews", as_json=True)["config"]
    assert metadata["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": ["-1", "1"]},
        {"name": "input_ids", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "attention_mask", "datatype": "INT64", "shape": ["-1", "-1"]},
    ]
    assert [(i["name"], i["data_type"], i.get("optional")) for i in config["input"]] == [
        ("text", "TYPE_STRING", True),
        ("input_ids", "TYPE_INT64", True),
        ("attention_mask", "TYPE_INT64", True),
    ]
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert parameters["tokenizer_sha256"] == text_tokenizer.sha256
    assert parameters["max_length"] == str(text_tokenizer.max_length)
    assert parameters["max_text_bytes"] == str(64 * 1024)
    assert "truncated" in parameters["note"]


def test_a_text_version_without_its_tokenizer_is_not_served(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register_text_version(
            registry, tmp_path, "reviews", tokenizer(), seed=1, with_tokenizer=False
        )
    with (
        pytest.raises(
            ArtifactNotFound, match=r"reviews:1 is a text model .* no tokenizer artifact"
        ),
        running_server(home, models=("reviews",)),
    ):
        pass


CLIENTS = 4
MAX_REQUESTS = 3000
"""Per client: the load is bounded even if the swap never came."""


def test_a_hot_swap_under_load_changes_model_and_tokenizer_together(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first, second = tokenizer("bpe", 200, 16), tokenizer("wordpiece", 300, 12)
    assert first.sha256 != second.sha256
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register_text_version(registry, tmp_path, "reviews", first, seed=1)
        register_text_version(registry, tmp_path, "reviews", second, seed=2, alias=None)
        expected = {
            "1": engine_logits(registry, "reviews", 1, first, TEXTS),
            "2": engine_logits(registry, "reviews", 2, second, TEXTS),
        }
    assert not np.allclose(expected["1"], expected["2"])
    answers: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    sink = TrafficSink(home, TrafficSettings(flush_interval_s=60))
    with running_server(home, models=("reviews",), poll_interval_s=0.05, sink=sink) as server:

        def send(client_index: int) -> None:
            with server.client() as client:
                for _ in range(MAX_REQUESTS):
                    if stop.is_set():
                        return
                    try:
                        result = client.infer("reviews", [_text_input(TEXTS)])
                    except Exception as exc:
                        with lock:
                            errors.append(exc)
                        continue
                    version = result.get_response().model_version
                    with lock:
                        answers[client_index].append((version, result.as_numpy("logits")))

        def seen(version: str) -> int:
            with lock:
                return sum(1 for own in answers for v, _ in own if v == version)

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            assert wait_until(lambda: seen("1") >= 50, 60, 0.02)
            server.registry.promote("reviews:2", "production", gates=[], reason="swap test")
            assert wait_until(lambda: seen("2") >= 50, 60, 0.02)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)

    assert sink.close(60)
    assert errors == []
    assert {v for own in answers for v, _ in own} == {"1", "2"}
    for own in answers:
        versions = [v for v, _ in own]
        # Each client saw the version change once, from 1 to 2, never back.
        assert versions == sorted(versions)
        for version, logits in own:
            np.testing.assert_allclose(logits, expected[version], atol=1e-5)
    # Every answered request is a row carrying its strings, and the token counts of the
    # tokenizer of the version that answered it.
    rows = scan_traffic(home, "reviews").frame.collect()
    assert len(rows) == sum(len(own) for own in answers)
    tokens = {1: first.encode(TEXTS).lengths.tolist(), 2: second.encode(TEXTS).lengths.tolist()}
    assert tokens[1] != tokens[2]
    for row in rows.iter_rows(named=True):
        assert row["status"] == "ok"
        assert row["texts"] == TEXTS
        assert row["text_tokens"] == tokens[row["version"]]
        assert row["input"] is None


PERF_ANALYZER = Path(__file__).resolve().parents[2] / ".bench" / "perf_analyzer" / "perf_analyzer"


@pytest.mark.skipif(
    not PERF_ANALYZER.exists(),
    reason=f"perf_analyzer is not installed at {PERF_ANALYZER} "
    "(../shared/tools/install-perf-analyzer .bench/perf_analyzer)",
)
def test_perf_analyzer_sends_strings_alone(served: Served, tmp_path: Path) -> None:
    # The pre-tokenised inputs are optional in ModelConfig, so perf_analyzer sends only the
    # input its data names.
    server, _ = served
    data = tmp_path / "texts.json"
    rows = [{"text": {"content": [t], "shape": [1]}} for t in TEXTS]
    data.write_text(json.dumps({"data": rows}))
    result = subprocess.run(
        [str(PERF_ANALYZER), "-m", "reviews", "-i", "grpc", "-u", server.url,
         "--concurrency-range", "2:2", "--measurement-interval", "500",
         "--stability-percentage", "100", "--input-data", str(data)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    assert throughput and float(throughput.group(1)) > 0
    assert all(event.error is None for event in server.traffic)


@pytest.mark.slow
def test_a_trained_text_model_compiled_for_onnxruntime_answers_strings(tmp_path: Path) -> None:
    # Kiln's own path end to end: trainer, tokenizer artifact, `kiln compile`, `kiln serve`.
    settings = Settings(home=tmp_path / "home")
    with kiln.registry.open(settings=settings) as registry:
        version = train_text_version(registry, settings, alias="production", epochs=1)
        compile_version(
            registry, version.ref, CompileOptions(measure_seconds=0.0, parity_samples=32), settings
        )
        artifact = registry.artifacts("reviews", version.version, "onnxruntime")[0]
        tokenizer_file = registry.artifact_file(
            registry.artifacts("reviews", version.version, "tokenizer")[0]
        )
        text_tokenizer = TextTokenizer.from_file(tokenizer_file)
        with load(registry.artifact_file(artifact), "onnxruntime") as engine:
            expected = engine.infer(text_tokenizer.encode(TEXTS).inputs())["logits"]
    with running_server(settings.home, models=("reviews",)) as server, server.client() as client:
        result = client.infer("reviews", [_text_input(TEXTS)])
        config = client.get_model_config("reviews", as_json=True)["config"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
    assert config["parameters"]["tokenizer_sha256"]["string_value"] == text_tokenizer.sha256


def test_a_swap_to_a_text_version_without_its_tokenizer_leaves_the_old_one_serving(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register_text_version(registry, tmp_path, "reviews", tokenizer(), seed=1)
        register_text_version(
            registry, tmp_path, "reviews", tokenizer("wordpiece"), seed=2, alias=None,
            with_tokenizer=False,
        )  # fmt: skip
    with (
        running_server(home, models=("reviews",), poll_interval_s=0.05) as server,
        server.client() as client,
    ):
        server.registry.promote("reviews:2", "production", gates=[], reason="no tokenizer")
        served: set[str] = set()

        def failed_swap_reported() -> bool:
            result = client.infer("reviews", [_text_input(TEXTS)])
            served.add(result.get_response().model_version)
            entries = client.get_model_repository_index(as_json=True)["models"]
            return "reason" in entries[0]

        assert wait_until(failed_swap_reported, 60, 0.02)
        reason = client.get_model_repository_index(as_json=True)["models"][0]["reason"]
    assert served == {"1"}
    assert "cannot serve reviews:2" in reason
    assert "no tokenizer artifact" in reason
