"""The promotion gates on two regression versions of a real data set (diabetes): held-out RMSE,
traffic RMSE on logged requests with numeric feedback, recorded test_rmse, and `kiln promote`.

The versions are linear models fitted here with numpy and written as ONNX files, registered
with the config a regressor carries (task, data set, split): plain models made outside Kiln's
trainer, as `kiln register --onnx --dataset` records them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.registry
from kiln.data import load_recorded
from kiln.errors import GateFailed, InvalidArgument
from kiln.evaluate.gates import Evaluator, GateThresholds, HeldOutGate, TrafficGate
from kiln.evaluate.labelled import holdout_mask
from kiln.registry import GateContext, RecordedRmseGate, Registry
from kiln.settings import Settings
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord
from tests.integration.regressors import write_regressor

pytestmark = pytest.mark.both_registries

MODEL = "sugar"
SPLIT = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}
CONFIG = {"task": "regression", "class_names": [], "dataset": "diabetes", "split": SPLIT}


@pytest.fixture
def data(settings: Settings) -> Any:
    return load_recorded("diabetes", SPLIT, settings)


@pytest.fixture
def fitted(data: Any) -> tuple[np.ndarray, float]:
    """Least squares on the training split: the good model."""
    x = np.c_[data.train.x.astype(np.float64), np.ones(len(data.train.x))]
    solution = np.linalg.lstsq(x, data.train.y.astype(np.float64), rcond=None)[0]
    return solution[:10], float(solution[10])


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with kiln.registry.open(settings=settings) as opened:
        yield opened


def register(
    registry: Registry,
    tmp_path: Path,
    weights: np.ndarray,
    bias: float,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> int:
    folder = tmp_path / f"v{len(list(tmp_path.glob('v*')))}"
    folder.mkdir()
    path = write_regressor(folder / "model.onnx", weights, bias)
    version = registry.register_version(
        MODEL, checkpoint=path, config=dict(config or CONFIG), metrics=metrics or {}
    )
    registry.add_artifact(
        MODEL, version.version, kind="onnx", path=path, report={"parity": {"passed": True}}
    )
    return version.version


def context(registry: Registry, candidate: int, current: int | None) -> GateContext:
    return GateContext(
        MODEL,
        "production",
        registry.get_version(MODEL, candidate),
        None if current is None else registry.get_version(MODEL, current),
    )


def rmse(data: Any, weights: np.ndarray, bias: float) -> float:
    predicted = data.test.x.astype(np.float64) @ weights + bias
    return float(np.sqrt(np.mean((predicted - data.test.y) ** 2)))


def test_held_out_rmse_may_rise_by_the_tolerance_only(
    registry: Registry, settings: Settings, tmp_path: Path, data: Any, fitted: Any
) -> None:
    weights, bias = fitted
    good = register(registry, tmp_path, weights, bias)
    worse = register(registry, tmp_path, weights * 0.8, bias)
    gate = HeldOutGate(Evaluator(registry, settings, GateThresholds()))
    refused = gate(context(registry, worse, good))
    assert not refused.passed
    assert refused.numbers["candidate"] == pytest.approx(rmse(data, weights * 0.8, bias), rel=1e-5)
    assert refused.numbers["current"] == pytest.approx(rmse(data, weights, bias), rel=1e-5)
    assert refused.numbers["samples"] == 88 and refused.numbers["limit"] == 0.02
    assert "diabetes held-out RMSE (88 test samples, none of them trained on)" in refused.message
    assert "at most +2.00% allowed" in refused.message
    assert gate(context(registry, good, worse)).passed
    # A looser tolerance lets the worse one through when its increase is inside it.
    increase = refused.numbers["increase"]
    loose = HeldOutGate(
        Evaluator(registry, settings, GateThresholds(max_heldout_rmse_increase=increase + 0.01))
    )
    assert loose(context(registry, worse, good)).passed
    first = gate(context(registry, good, None))
    assert first.passed and "points nowhere yet; diabetes held-out RMSE" in first.message


def test_a_version_without_a_data_set_fails_with_that_reason(
    registry: Registry, settings: Settings, tmp_path: Path, fitted: Any
) -> None:
    weights, bias = fitted
    bare = {"task": "regression", "class_names": []}  # kiln register without --dataset
    current = register(registry, tmp_path, weights, bias, config=bare)
    candidate = register(registry, tmp_path, weights, bias, config=bare)
    result = HeldOutGate(Evaluator(registry, settings))(context(registry, candidate, current))
    assert not result.passed
    assert (
        result.message
        == f"could not evaluate: {MODEL}:{current} records no data set to evaluate it on"
    )


def test_a_classifier_and_a_regressor_are_not_compared(
    registry: Registry, settings: Settings, tmp_path: Path, fitted: Any
) -> None:
    weights, bias = fitted
    classifier = register(registry, tmp_path, weights, bias, config={"dataset": "diabetes"})
    regressor = register(registry, tmp_path, weights, bias)
    evaluator = Evaluator(registry, settings)
    for gate in (HeldOutGate(evaluator), TrafficGate(evaluator)):
        result = gate(context(registry, regressor, classifier))
        assert not result.passed and "their errors cannot be compared" in result.message


def log_traffic(home: Path, data: Any, weights: np.ndarray, bias: float) -> int:
    """Every diabetes sample served once by version 1 with its true value as feedback;
    returns how many are held out from retraining (what the traffic gate judges on)."""
    x = np.concatenate([data.train.x, data.val.x, data.test.x])
    y = np.concatenate([data.train.y, data.val.y, data.test.y])
    ids = [f"q{i}" for i in range(len(x))]
    with TrafficLogger(home) as logger, FeedbackWriter(home) as feedback:
        for i, request_id in enumerate(ids):
            record = TrafficRecord(request_id, time.time_ns() // 1000, MODEL, 1, 100)
            record.input = x[i : i + 1]
            record.output = (
                (x[i : i + 1].astype(np.float64) @ weights + bias).astype(np.float32).reshape(1, 1)
            )
            logger.log(record)
            feedback.add(request_id, value=float(y[i]), model=MODEL)
    return int(holdout_mask(ids).sum())


def test_traffic_rmse_must_not_rise(
    registry: Registry, settings: Settings, tmp_path: Path, data: Any, fitted: Any
) -> None:
    weights, bias = fitted
    good = register(registry, tmp_path, weights, bias)
    worse = register(registry, tmp_path, weights * 0.8, bias + 5.0)
    held = log_traffic(settings.home, data, weights, bias)
    gate = TrafficGate(Evaluator(registry, settings, GateThresholds()))
    passed = gate(context(registry, good, worse))
    assert passed.passed and passed.numbers["samples"] == held >= 20
    assert passed.numbers["gain"] > 0 and "fell by" in passed.message
    assert "(must not rise)" in passed.message
    refused = gate(context(registry, worse, good))
    assert not refused.passed and "rose by" in refused.message
    demanding = TrafficGate(Evaluator(registry, settings, GateThresholds(min_traffic_gain=0.99)))
    result = demanding(context(registry, good, worse))
    assert not result.passed and "must fall by at least 99.00%" in result.message


def test_recorded_test_rmse(registry: Registry, tmp_path: Path, fitted: Any) -> None:
    weights, bias = fitted
    current = register(registry, tmp_path, weights, bias, metrics={"test_rmse": 50.0})
    close = register(registry, tmp_path, weights, bias, metrics={"test_rmse": 50.9})
    far = register(registry, tmp_path, weights, bias, metrics={"test_rmse": 60.0})
    none = register(registry, tmp_path, weights, bias)
    gate = RecordedRmseGate(0.02)
    assert gate(context(registry, close, current)).passed
    refused = gate(context(registry, far, current))
    assert not refused.passed and "+20.00%, beyond +2.00%" in refused.message
    missing = gate(context(registry, none, current))
    assert not missing.passed and "recorded no test_rmse" in missing.message
    with pytest.raises(InvalidArgument, match="max-heldout-rmse-increase"):
        RecordedRmseGate(-0.1)


def test_the_registrys_default_gates_judge_a_regressor_by_rmse(
    registry: Registry, tmp_path: Path, fitted: Any
) -> None:
    """`Registry.promote` without gates (the Python API's default) picks the recorded metric by
    the candidate's task: a regressor records no test_accuracy and must not be refused for it."""
    weights, bias = fitted
    current = register(registry, tmp_path, weights, bias, metrics={"test_rmse": 50.0})
    registry.promote(f"{MODEL}:{current}", "production", reason="first")
    close = register(registry, tmp_path, weights, bias, metrics={"test_rmse": 50.5})
    move = registry.promote(f"{MODEL}:{close}", "production", reason="close enough")
    assert move.gate is not None
    assert [r.gate for r in move.gate.results] == ["test_rmse-not-worse"]
    far = register(registry, tmp_path, weights, bias, metrics={"test_rmse": 60.0})
    with pytest.raises(GateFailed, match="test_rmse"):
        registry.promote(f"{MODEL}:{far}", "production", reason="worse")


def test_kiln_promote_judges_a_regressor_by_rmse(
    cli: Any, registry: Registry, tmp_path: Path, fitted: Any
) -> None:
    weights, bias = fitted
    current = register(registry, tmp_path, weights, bias, metrics={"test_rmse": 50.0})
    registry.promote(f"{MODEL}:{current}", "production", gates=[], reason="test")
    worse = register(registry, tmp_path, weights * 0.8, bias, metrics={"test_rmse": 55.0})
    result = cli("promote", f"{MODEL}:{worse}", "--json")
    assert result.exit_code == 2
    gates = {g["gate"]: g for g in json.loads(result.stdout)["gates"]}
    assert not gates["test_rmse-not-worse"]["passed"]
    assert not gates["held-out-regression"]["passed"]
    assert "held-out RMSE" in gates["held-out-regression"]["message"]
    assert gates["traffic-gain"]["passed"]  # no traffic logged: no gain required
    allowed = cli("promote", f"{MODEL}:{worse}", "--max-heldout-rmse-increase", "1.5", "--json")
    assert allowed.exit_code == 0, allowed.stderr
    bad = cli("promote", f"{MODEL}:{worse}", "--max-heldout-rmse-increase", "-1")
    assert bad.exit_code == 2 and "max-heldout-rmse-increase" in bad.stderr


def test_the_rmse_tolerance_default_and_its_check() -> None:
    from kiln.cli import registry_promotion

    assert GateThresholds().max_heldout_rmse_increase == (
        registry_promotion.DEFAULT_MAX_HELDOUT_RMSE_INCREASE
    )
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument, match="max-heldout-rmse-increase"):
            GateThresholds(max_heldout_rmse_increase=bad).validate()
