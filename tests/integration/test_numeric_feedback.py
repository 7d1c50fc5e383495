"""Numeric feedback for regression models, end to end through a real `kiln serve` stack (gRPC
kiln.v1 into the real feedback store) and `kiln feedback import`, beside a classifier: each
model takes the kind of ground truth its task needs, and is told which one to send."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import polars as pl
import pytest

import kiln.registry
from kiln.registry import Registry
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import scan_feedback
from tests.integration.grpc_harness import register, running_server
from tests.integration.regressors import REGRESSION_CONFIG, write_regressor


def register_regressor(registry: Registry, workdir: Path, name: str = "sugar") -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    path = write_regressor(workdir / f"{name}.onnx", np.linspace(-1, 1, 10), 150.0)
    version = registry.register_version(
        name, checkpoint=path, config=dict(REGRESSION_CONFIG), metrics={}
    )
    registry.add_artifact(name, version.version, kind="onnx", path=path)
    registry.promote(version.ref, "production", gates=[], reason="test")
    return version.version


@pytest.fixture
def models(kiln_home: Path, tmp_path: Path) -> Path:
    with kiln.registry.open(settings=Settings(home=kiln_home)) as registry:
        register(registry, tmp_path / "models", "digits", seed=1)
        register_regressor(registry, tmp_path / "models")
    return kiln_home


def stored(home: Path) -> pl.DataFrame:
    columns = ["request_id", "label", "value", "model", "source"]
    return scan_feedback(home).frame.collect().select(columns).sort("request_id")


def test_grpc_takes_values_for_regressors_and_labels_for_classifiers(models: Path) -> None:
    from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2 as fb
    from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2_grpc as fb_grpc

    items = [
        fb.FeedbackItem(request_id="s1", value=151.5, model_name="sugar"),
        fb.FeedbackItem(request_id="s2", value=math.nan, model_name="sugar"),
        fb.FeedbackItem(request_id="s3", label=3, model_name="sugar"),
        fb.FeedbackItem(request_id="d1", value=2.5, model_name="digits"),
        fb.FeedbackItem(request_id="d2", label=3, model_name="digits"),
        fb.FeedbackItem(request_id="s4", label=2, value=1.0, model_name="sugar"),
        fb.FeedbackItem(request_id="s5", value=-math.inf, model_name="sugar"),
        fb.FeedbackItem(request_id="s6", value=0.0, model_name="sugar"),  # zero is a value
        fb.FeedbackItem(request_id="s7", model_name="sugar"),  # neither: label 0 is unset
    ]
    sink = TrafficSink(models, feedback_source="grpc")
    try:
        with (
            running_server(models, hooks=False, sink=sink) as server,
            grpc.insecure_channel(server.url) as channel,
        ):
            stub = fb_grpc.FeedbackStub(channel)
            batch = stub.SubmitFeedbackBatch(fb.SubmitFeedbackBatchRequest(items=items))
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitFeedback(fb.SubmitFeedbackRequest(item=items[1]))
    finally:
        sink.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "value nan is not a finite number" in str(err.value.details())
    reasons = {r.index: r.reason for r in batch.rejected}
    assert batch.accepted == 3 and sorted(reasons) == [1, 2, 3, 5, 6, 8]
    assert "value nan is not a finite number" in reasons[1]
    assert reasons[2] == (
        "the model is a regression model: send its true value as value, not a label (got label 3)"
    )
    assert reasons[3] == (
        "the model is a classification model: send the true class index as label, not a "
        "value (got value 2.5)"
    )
    assert "both a label and a value" in reasons[5]
    assert "value -inf is not a finite number" in reasons[6]
    assert "regression model: send its true value as value" in reasons[8]
    rows = stored(models).to_dicts()
    assert rows == [
        {"request_id": "d2", "label": 3, "value": None, "model": "digits", "source": "grpc"},
        {"request_id": "s1", "label": None, "value": 151.5, "model": "sugar", "source": "grpc"},
        {"request_id": "s6", "label": None, "value": 0.0, "model": "sugar", "source": "grpc"},
    ]


def test_kiln_feedback_import_takes_request_id_value_files(
    cli: Any, models: Path, tmp_path: Path
) -> None:
    values = tmp_path / "values.csv"
    values.write_text("request_id,value\na,151.5\nb,nan\nc,\nd,12\ne,abc\n")
    refused = cli("feedback", "import", str(values), "--model", "sugar")
    assert refused.exit_code == 2
    message = " ".join(refused.stderr.split())
    assert "3 of 5 rows are invalid, nothing was imported" in message
    assert "line 3: value nan is not a finite number" in message
    assert "line 6: value abc is not a number" in message
    assert "--skip-invalid" in message
    assert not (models / "feedback").exists()
    imported = cli("feedback", "import", str(values), "--model", "sugar", "--skip-invalid")
    assert imported.exit_code == 0, imported.stderr
    assert "imported 2 value(s)" in imported.stdout
    result = cli("feedback", "import", str(values), "--model", "sugar", "--skip-invalid", "--json")
    report = json.loads(result.stdout)
    assert (report["rows"], report["values"], report["refused"]) == (2, 2, 3)
    assert report["unchecked_models"] == []
    assert [e["value"] for e in report["refused_examples"]] == ["nan", None, "abc"]
    frame = stored(models).filter(pl.col("request_id") == "a")
    assert frame["value"].to_list() == [151.5, 151.5] and frame["label"].null_count() == 2

    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\na,3\n")
    wrong = cli("feedback", "import", str(labels), "--model", "sugar")
    assert wrong.exit_code == 2
    assert "the model is a regression model: send its true value as value" in " ".join(
        wrong.stderr.split()
    )
    to_classifier = tmp_path / "to_digits.csv"
    to_classifier.write_text("request_id,value,model\na,1.5,digits\n")
    refused = cli("feedback", "import", str(to_classifier))
    assert refused.exit_code == 2
    assert "the model is a classification model: send the true class index as label" in (
        " ".join(refused.stderr.split())
    )
