"""A request the server refused is logged, and no reader of the log fails on its row.

Through the real stack: `kiln serve`'s gRPC server (in-process, port 0) with the real
`TrafficSink`, a stock `tritonclient` sending float images and one BYTES tensor to the float
model (refused, INVALID_ARGUMENT), then the real CLI over the log it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

import kiln.registry
from kiln.data.profile import reference_profile
from kiln.evaluate.labelled import labelled_traffic
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import FeedbackWriter, TrafficSettings, scan_traffic
from tests.integration.grpc_harness import IMAGE, INPUT, images, running_server, write_classifier

MODEL = "digits"


def strict_json(text: str) -> Any:
    """JSON as other languages read it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} in the output is not JSON")

    return json.loads(text, parse_constant=refuse)


def register_float_model(home: Path, workdir: Path) -> None:
    """A float32 (N,1,28,28) -> (N,10) classifier with class names and a reference profile."""
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "ckpt.safetensors"
    checkpoint.write_bytes(b"weights")
    scores = np.random.default_rng(1).standard_normal((200, 10)).astype(np.float32)
    config = {
        "class_names": [str(i) for i in range(10)],
        "reference": reference_profile(images(500, seed=7), list(IMAGE), scores),
    }
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        version = registry.register_version(MODEL, checkpoint=checkpoint, config=config, metrics={})
        onnx = write_classifier(workdir / "model.onnx", seed=3)
        registry.add_artifact(MODEL, version.version, kind="onnx", path=onnx)
        registry.promote(version.ref, "production", gates=[], reason="test")


@pytest.fixture
def refused_log(kiln_home: Path, tmp_path: Path) -> list[str]:
    """120 answered float requests (every one labelled) and one refused BYTES request."""
    register_float_model(kiln_home, tmp_path / "work")
    sink = TrafficSink(kiln_home, TrafficSettings(flush_interval_s=60))
    ids = []
    try:
        with running_server(kiln_home, also=sink.on_request) as server:
            client = server.client()
            for i, x in enumerate(images(120, seed=2)):
                request = triton.InferInput(INPUT, [1, *IMAGE], "FP32")
                request.set_data_from_numpy(x[None])
                ids.append(client.infer(MODEL, [request], request_id=f"ok-{i}").get_response().id)
            refused = triton.InferInput(INPUT, [1, 2], "BYTES")
            refused.set_data_from_numpy(np.array([[b"not", b"floats"]], dtype=np.object_))
            with pytest.raises(InferenceServerException) as info:
                client.infer(MODEL, [refused], request_id="refused-1")
            assert "INVALID_ARGUMENT" in str(info.value.status())
            client.close()
    finally:
        assert sink.close(30)
    with FeedbackWriter(kiln_home) as feedback:
        for i, request_id in enumerate(ids):
            feedback.add(request_id, i % 10, model=MODEL)
        feedback.add("refused-1", 3, model=MODEL)
    return ids


def test_the_refused_request_is_logged_as_every_reader_expects(
    refused_log: list[str], kiln_home: Path
) -> None:
    scan = scan_traffic(kiln_home, MODEL)
    rows = scan.frame.collect()
    assert rows.height == 121
    refused = rows.filter(pl.col("request_id") == "refused-1").row(0, named=True)
    assert refused["status"] == "invalid_argument"
    # No input values, so no input shape either: readers take a shape to mean values exist.
    assert refused["input"] is None and refused["input_shape"] is None


def test_evaluate_and_stats_read_a_log_with_a_refused_request(
    refused_log: list[str], cli: Any
) -> None:
    stats = cli("traffic", "stats", MODEL, "--json")
    assert stats.exit_code == 0, stats.stderr
    assert strict_json(stats.stdout)["errors"] == 1
    result = cli("evaluate", MODEL, "--json")
    assert result.exit_code == 0, result.stderr
    report = strict_json(result.stdout)
    assert report["requests"] == 121 and report["labelled"] == 120
    (drift,) = report["drift"]["versions"]
    assert drift["inputs"]["samples"] == 120


def test_retraining_reads_a_log_with_a_refused_request(
    refused_log: list[str], kiln_home: Path
) -> None:
    rows = labelled_traffic(kiln_home, MODEL)
    assert len(rows) == 120 and rows.x.shape == (120, *IMAGE)
    assert sorted(rows.request_ids) == sorted(refused_log)
