"""Retraining a regressor Kiln trained, from requests labelled with true values (issue #15):
the traffic rows' values join the parent's data set as float targets, the held-out test split
stays out of training, and the candidate is a compiled regressor with RMSE metrics."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import kiln.registry
from kiln.compile import CompileOptions, compile_version
from kiln.data import Dataset, load_dataset
from kiln.loop.retrain import RetrainOptions, retrain
from kiln.loop.watch import LoopPolicy, run_loop
from kiln.settings import Settings
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord
from kiln.train import TrainConfig, register_result, train

pytestmark = pytest.mark.slow


@pytest.fixture
def served(kiln_home: Path) -> tuple[Settings, Dataset, int]:
    """sugar:1, a regressor Kiln trained on diabetes, in production, and requests it answered
    badly (150 for everything), each labelled with its true value: training samples and, to be
    left out of retraining, ten held-out test samples. Returns the settings, the data set and
    the number of requests."""
    settings = Settings(home=kiln_home)
    data = load_dataset("diabetes", settings)
    with kiln.registry.open(settings=settings) as registry:
        result = train(
            TrainConfig.for_task("regression", dataset="diabetes", epochs=3),
            settings,
            show_progress=False,
        )
        parent = register_result(registry, "sugar", result)
        compile_version(
            registry, parent.ref, CompileOptions(measure_seconds=0.0, parity_samples=64), settings
        )
        registry.promote(parent.ref, "production", gates=[], reason="first")
    samples = np.concatenate([data.val.x, data.test.x[:10]])
    values = np.concatenate([data.val.y, data.test.y[:10]])
    logger, feedback = TrafficLogger(kiln_home), FeedbackWriter(kiln_home)
    now_us = time.time_ns() // 1000
    for i, (x, y) in enumerate(zip(samples, values, strict=True)):
        request_id = uuid.uuid4().hex
        logger.log(TrafficRecord(request_id, now_us - 1000 + i, "sugar", parent.version, 400,
                                 input=x[None].copy(),
                                 output=np.array([[150.0]], np.float32)))  # fmt: skip
        feedback.add(request_id, value=float(y), model="sugar", source="file", task="regression")
    assert logger.close(30) and feedback.close(30)
    return settings, data, len(samples)


def test_a_regressor_retrains_on_labelled_values(served: tuple[Settings, Dataset, int]) -> None:
    settings, data, requests = served
    with kiln.registry.open(settings=settings) as registry:
        retrained = retrain(
            registry, "sugar", settings,
            RetrainOptions(min_labels=10, epochs=2, show_progress=False),
        )  # fmt: skip
        version = registry.get_version("sugar", retrained.version.version)
    assert retrained.labels == requests
    assert retrained.excluded_heldout == 10
    assert retrained.trained_on + retrained.held_out == len(data.val.x)
    assert version.config["task"] == "regression"
    assert {"test_rmse", "test_mae", "test_r2"} <= set(version.metrics)
    assert "onnxruntime" in retrained.engines
    # The values joined the training set as float targets.
    assert retrained.dataset.train.y.dtype == np.float32
    assert len(retrained.dataset.train) > len(data.train)


def test_kiln_loop_retrains_a_regressor_whose_traffic_rmse_rose(
    served: tuple[Settings, Dataset, int],
) -> None:
    settings, _, requests = served
    policy = LoopPolicy(min_labels=10, approve="manual", on_drift=False)
    with kiln.registry.open(settings=settings) as registry:
        (current,) = run_loop(registry, "sugar", settings, policy, once=True)
    assert current.rmse is not None and current.accuracy is None
    assert any(r.startswith("RMSE ") and "at training" in r for r in current.reasons)
    assert current.new_labels == requests
    assert current.action == "awaiting-approval", current.message
    assert current.candidate == "sugar:2"
