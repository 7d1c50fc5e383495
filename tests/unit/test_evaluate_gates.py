"""The evaluation gates' parts that need no trained model: thresholds, the held-out slice,
latency, and gates that cannot evaluate failing instead of raising."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.registry
from kiln.cli import registry_promotion
from kiln.errors import InvalidArgument
from kiln.evaluate.gates import (
    Evaluator,
    GateThresholds,
    HeldOutGate,
    LatencyGate,
    ParityGate,
    unseen_holdout_mask,
)
from kiln.evaluate.labelled import LabelledTraffic, holdout_mask
from kiln.registry import GateContext, Registry
from kiln.settings import Settings

pytestmark = pytest.mark.both_registries


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with kiln.registry.open(settings=settings) as opened:
        yield opened


def _version(registry: Registry, tmp_path: Path, report: dict[str, Any]) -> int:
    """A version whose 'engine' is random bytes with the given compile report."""
    folder = tmp_path / str(len(list(tmp_path.iterdir())))
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(32))
    (folder / "model.onnx").write_bytes(os.urandom(32))
    version = registry.register_version(
        "digits",
        checkpoint=folder / "model.safetensors",
        config={"dataset": "digits", "split": {"seed": 0, "val_fraction": 0.1}},
        metrics={},
    )
    registry.add_artifact(
        "digits", version.version, kind="onnxruntime", path=folder / "model.onnx", report=report
    )
    return version.version


def _context(registry: Registry, candidate: int, current: int | None) -> GateContext:
    return GateContext(
        "digits",
        "production",
        registry.get_version("digits", candidate),
        None if current is None else registry.get_version("digits", current),
    )


def test_cli_defaults_are_the_thresholds_defaults() -> None:
    defaults = GateThresholds()
    assert defaults.min_traffic_gain == registry_promotion.DEFAULT_MIN_TRAFFIC_GAIN
    assert defaults.max_heldout_regression == registry_promotion.DEFAULT_MAX_REGRESSION
    assert defaults.latency_budget == registry_promotion.DEFAULT_LATENCY_BUDGET
    assert defaults.traffic_window == registry_promotion.DEFAULT_TRAFFIC_WINDOW


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        (GateThresholds(latency_budget=0), "latency budget"),
        (GateThresholds(latency_budget=float("inf")), "latency budget"),
        (GateThresholds(min_traffic_gain=float("nan")), "min-traffic-gain"),
        (GateThresholds(max_heldout_regression=1.5), "max-heldout-regression"),
        (GateThresholds(min_traffic_samples=0), "min_traffic_samples"),
        (GateThresholds(holdout_fraction=1.0), "holdout_fraction"),
        (GateThresholds(traffic_window="soon"), "soon"),
    ],
)
def test_bad_thresholds_are_refused(thresholds: GateThresholds, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        thresholds.validate()


def test_held_out_requests_whose_input_was_sent_again_are_left_out() -> None:
    rng = np.random.default_rng(0)
    ids = [f"r{i}" for i in range(400)]
    x = rng.random((400, 4), dtype=np.float32)
    held = holdout_mask(ids)
    # Resend two held-out inputs under ids retraining learns from.
    first_held = np.flatnonzero(held)[:2]
    trained = np.flatnonzero(~held)[:2]
    x[trained] = x[first_held]
    zeros = np.zeros(400, np.int64)
    rows = LabelledTraffic(x, zeros, ids, zeros, zeros, zeros)
    mask = unseen_holdout_mask(rows, 0.25)
    assert mask.sum() == held.sum() - 2
    assert not mask[first_held].any() and (mask <= held).all()


def test_latency_is_judged_against_the_budget(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    current = _version(registry, tmp_path, {"performance": {"latency_ms_p50": 1.0}})
    slow = _version(registry, tmp_path, {"performance": {"latency_ms_p50": 2.0}})
    fine = _version(registry, tmp_path, {"performance": {"latency_ms_p50": 1.4}})
    unmeasured = _version(registry, tmp_path, {})
    gate = LatencyGate(Evaluator(registry, settings, GateThresholds(latency_budget=1.5)))
    refused = gate(_context(registry, slow, current))
    assert not refused.passed
    assert refused.numbers == {"candidate_ms": 2.0, "current_ms": 1.0, "budget": 1.5}
    assert "2.000 ms vs 1.000 ms" in refused.message
    assert gate(_context(registry, fine, current)).passed
    skipped = gate(_context(registry, unmeasured, current))
    assert skipped.passed and f"digits:{unmeasured} was compiled without timing" in (
        skipped.message
    )


def test_an_engine_that_cannot_load_fails_the_gates_without_raising(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    """Random bytes as an onnxruntime engine: the backend's load error becomes a failed gate
    (it used to escape `promote` as an internal error)."""
    current = _version(registry, tmp_path, {"parity": {"passed": True}})
    broken = _version(registry, tmp_path, {"parity": {"passed": True}})
    evaluator = Evaluator(registry, settings)
    context = _context(registry, broken, current)
    result = HeldOutGate(evaluator)(context)
    assert not result.passed and result.message.startswith("could not evaluate")
    assert "not a loadable ONNX model" in result.message
    assert ParityGate(evaluator)(context).passed  # the report says so; loading is HeldOut's job
