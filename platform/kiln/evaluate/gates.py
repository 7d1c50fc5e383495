"""Evaluation gates: a candidate is promoted only when it is measurably better where it matters
and no worse elsewhere.

They plug into the registry's promotion hook (`Registry.promote(..., gates=...)`) and judge
the candidate against what the alias serves now, by running both versions' engines:

- `HeldOutGate`: accuracy on the parent data set's held-out test split may fall by at most
  `max_heldout_regression`;
- `TrafficGate`: accuracy on the held-out slice of recent labelled traffic must rise by at
  least `min_traffic_gain` (the slice retraining never saw: `labelled.holdout_mask`);
- `LatencyGate`: the candidate's batch-1 latency (measured at compile time) within
  `latency_budget` times the current version's;
- `ParityGate`: the candidate has an engine whose parity check passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.data import load_dataset
from kiln.errors import KilnError
from kiln.evaluate.labelled import DEFAULT_HOLDOUT, LabelledTraffic, holdout_mask, labelled_traffic
from kiln.registry import (
    Artifact,
    ArtifactKind,
    Gate,
    GateContext,
    GateResult,
    ModelVersion,
    Registry,
)
from kiln.registry.engines import choose_artifact, open_engine
from kiln.settings import Settings
from kiln.traffic import Window
from kiln_engines import EngineOptions


@dataclass(frozen=True)
class GateThresholds:
    """Where the evaluation gates draw their lines (`kiln promote` options set them)."""

    min_traffic_gain: float = 0.0
    """Candidate minus current accuracy on held-out labelled traffic, at least this."""
    max_heldout_regression: float = 0.01
    """Current minus candidate accuracy on the held-out test split, at most this."""
    latency_budget: float = 1.5
    """Candidate batch-1 p50 latency at most this many times the current version's."""
    min_traffic_samples: int = 20
    """Fewer labelled held-out requests than this cannot show a gain."""
    traffic_window: str = "24h"
    holdout_fraction: float = DEFAULT_HOLDOUT


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean()) if labels.size else math.nan


@dataclass
class Evaluator:
    """Runs versions on the evaluation data, once each, shared by the gates of one promotion."""

    registry: Registry
    settings: Settings
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    _predictions: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)
    _traffic_by_model: dict[str, LabelledTraffic] = field(default_factory=dict)

    def predict(self, version: ModelVersion, x: np.ndarray, data: str) -> np.ndarray:
        key = (version.name, version.version, data)
        if key not in self._predictions:
            engine, _ = open_engine(
                self.registry, version.name, version.version, EngineOptions(intra_op_threads=0)
            )
            try:
                name = engine.signature.inputs[0].name
                step = engine.signature.max_batch or 256
                parts = [
                    next(iter(engine.infer({name: x[i : i + step]}).values())).argmax(axis=1)
                    for i in range(0, len(x), step)
                ]
            finally:
                engine.close()
            self._predictions[key] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._predictions[key]

    def held_out(self, version: ModelVersion) -> tuple[np.ndarray, np.ndarray, str]:
        config = version.config
        split = config.get("split") or {}
        dataset = load_dataset(
            str(config["dataset"]),
            self.settings,
            seed=int(split.get("seed", config.get("seed", 0))),
            val_fraction=float(split.get("val_fraction", 0.1)),
            test_fraction=float(split.get("test_fraction", 0.1)) or 0.1,
        )
        return dataset.test.x, dataset.test.y, str(config["dataset"])

    def traffic(self, name: str) -> LabelledTraffic:
        if name not in self._traffic_by_model:
            try:
                rows = labelled_traffic(
                    self.settings.home, name, Window.last(self.thresholds.traffic_window)
                )
            except KilnError:
                rows = labelled_traffic_empty()
            mask = holdout_mask(rows.request_ids, self.thresholds.holdout_fraction)
            self._traffic_by_model[name] = rows.subset(mask)
        return self._traffic_by_model[name]


def labelled_traffic_empty() -> LabelledTraffic:
    empty = np.zeros((0,), dtype=np.int64)
    return LabelledTraffic(np.zeros((0,), np.float32), empty, [], empty, empty, empty)


class HeldOutGate:
    name = "held-out-regression"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, context: GateContext) -> GateResult:
        limit = self.evaluator.thresholds.max_heldout_regression
        try:
            x, y, dataset = self.evaluator.held_out(context.candidate)
            candidate = _accuracy(self.evaluator.predict(context.candidate, x, dataset), y)
            if context.current is None:
                return GateResult(
                    self.name, True, {"candidate": candidate},
                    f"{context.alias} points nowhere yet; candidate scores {candidate:.4f}",
                )  # fmt: skip
            current = _accuracy(self.evaluator.predict(context.current, x, dataset), y)
        except KilnError as exc:
            return GateResult(self.name, False, {}, f"could not evaluate: {exc.message}")
        drop = current - candidate
        numbers: dict[str, float | None] = {
            "candidate": candidate, "current": current, "drop": drop, "limit": limit,
        }  # fmt: skip
        passed = drop <= limit
        return GateResult(
            self.name,
            passed,
            numbers,
            f"{dataset} held-out accuracy {candidate:.4f} vs {current:.4f} "
            f"({-drop:+.4f}; at most -{limit:g} allowed)",
        )


class TrafficGate:
    name = "traffic-gain"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, context: GateContext) -> GateResult:
        t = self.evaluator.thresholds
        rows = self.evaluator.traffic(context.name)
        numbers: dict[str, Any] = {"samples": len(rows), "min_gain": t.min_traffic_gain}
        if len(rows) < t.min_traffic_samples:
            passed = t.min_traffic_gain <= 0
            return GateResult(
                self.name, passed, numbers,
                f"only {len(rows)} held-out labelled requests in the last {t.traffic_window} "
                f"(need {t.min_traffic_samples} to measure a gain)",
            )  # fmt: skip
        try:
            candidate = _accuracy(
                self.evaluator.predict(context.candidate, rows.x, "traffic"), rows.y
            )
            current = (
                _accuracy(self.evaluator.predict(context.current, rows.x, "traffic"), rows.y)
                if context.current is not None
                else math.nan
            )
        except KilnError as exc:
            return GateResult(self.name, False, numbers, f"could not evaluate: {exc.message}")
        if context.current is None:
            numbers["candidate"] = candidate
            return GateResult(self.name, True, numbers, f"{context.alias} points nowhere yet")
        gain = candidate - current
        numbers.update({"candidate": candidate, "current": current, "gain": gain})
        passed = gain >= t.min_traffic_gain
        return GateResult(
            self.name,
            passed,
            numbers,
            f"accuracy on {len(rows)} held-out labelled requests {candidate:.4f} vs "
            f"{current:.4f} ({gain:+.4f}; at least {t.min_traffic_gain:+g} required)",
        )


def _latency_ms(registry: Registry, version: ModelVersion) -> float | None:
    try:
        artifact = choose_artifact(registry, version.name, version.version).artifact
    except KilnError:
        return None
    performance = (artifact.report or {}).get("performance") or {}
    value = performance.get("latency_ms_p50")
    return float(value) if isinstance(value, int | float) else None


class LatencyGate:
    name = "latency-budget"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, context: GateContext) -> GateResult:
        budget = self.evaluator.thresholds.latency_budget
        candidate = _latency_ms(self.evaluator.registry, context.candidate)
        current = _latency_ms(self.evaluator.registry, context.current) if context.current else None
        numbers = {"candidate_ms": candidate, "current_ms": current, "budget": budget}
        if candidate is None or current is None:
            return GateResult(self.name, True, numbers, "no latency measured to compare")
        # 50 µs of slack: sub-millisecond timings on a busy host jitter by that much.
        passed = candidate <= current * budget + 0.05
        return GateResult(
            self.name,
            passed,
            numbers,
            f"batch-1 p50 {candidate:.3f} ms vs {current:.3f} ms (budget {budget:g}x)",
        )


def _parity_passed(artifact: Artifact) -> bool:
    parity = (artifact.report or {}).get("parity") or {}
    return bool(parity.get("passed"))


class ParityGate:
    name = "parity-passed"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, context: GateContext) -> GateResult:
        engines = [
            a
            for a in self.evaluator.registry.artifacts(
                context.candidate.name, context.candidate.version
            )
            if a.kind is not ArtifactKind.CHECKPOINT
        ]
        verified = [a.kind.value for a in engines if _parity_passed(a)]
        return GateResult(
            self.name,
            bool(verified),
            {"engines": len(engines), "verified": len(verified)},
            f"verified engines: {', '.join(verified)}"
            if verified
            else f"{context.candidate.ref} has no engine that passed parity; run kiln compile",
        )


def evaluation_gates(
    registry: Registry, settings: Settings, thresholds: GateThresholds | None = None
) -> list[Gate]:
    """The gates `kiln promote` runs: parity, held-out regression, traffic gain, latency."""
    evaluator = Evaluator(registry, settings, thresholds or GateThresholds())
    return [
        ParityGate(evaluator),
        HeldOutGate(evaluator),
        TrafficGate(evaluator),
        LatencyGate(evaluator),
    ]


__all__ = [
    "Evaluator",
    "GateThresholds",
    "HeldOutGate",
    "LatencyGate",
    "ParityGate",
    "TrafficGate",
    "evaluation_gates",
]
