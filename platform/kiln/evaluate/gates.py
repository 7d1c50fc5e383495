"""Evaluation gates: a candidate is promoted only when it is measurably better where it matters
and no worse elsewhere.

They plug into the registry's promotion hook (`Registry.promote(..., gates=...)`) and judge
the candidate against what the alias points at now, by running both versions' engines (the
ones a server on this host would load) on the same inputs:

- `ParityGate`: the candidate's engine has a passed parity check against its checkpoint;
- `HeldOutGate`: accuracy on the held-out test split of the data set the current version was
  trained on (for a retrained candidate: its parent's) may fall by at most
  `max_heldout_regression`. Retraining never learns from a request whose input equals a
  sample of that split (`kiln.loop.retrain`), so no version trained on it; a version
  retrained before that rule, or trained on other data, gets a note saying its number may
  include training samples;
- `TrafficGate`: accuracy on the held-out slice of recent labelled traffic (the requests
  `labelled.holdout_mask` keeps out of retraining, minus any whose input retraining saw under
  another request id) must rise by at least `min_traffic_gain`;
- for a regression candidate, both judge RMSE instead (`kiln.evaluate.regression_gates`);
- `LatencyGate`: the candidate's batch-1 p50 latency (measured at compile time) at most
  `latency_budget` times the current version's.

A gate that cannot evaluate (no engine, data set gone, unreadable traffic) fails with the
reason instead of raising: the promotion is refused with every gate's numbers, and `--force`
can still override it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.evaluate.evaluator import (
    EVALUATION_ERRORS,
    Evaluator,
    GateThresholds,
    HeldOut,
    unseen_holdout_mask,
)
from kiln.evaluate.regression_gates import heldout_rmse, is_regression, traffic_rmse
from kiln.registry import Gate, GateContext, GateResult, ModelVersion, Registry
from kiln.registry.loader import choose_artifact
from kiln.settings import Settings


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean()) if labels.size else math.nan


class HeldOutGate:
    name = "held-out-regression"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, context: GateContext) -> GateResult:
        if is_regression(context):
            return heldout_rmse(self.name, self.evaluator, context, self._notes)
        limit = self.evaluator.thresholds.max_heldout_regression
        # Judge on the data the current version was made for: "no worse elsewhere" means no
        # worse at what production does now. With nothing served, the candidate's own data.
        judged_by = context.current or context.candidate
        try:
            data = self.evaluator.held_out(judged_by)
            key = f"held-out:{data.dataset}:{sorted(data.split.items())}"
            candidate = _accuracy(self.evaluator.predict(context.candidate, data.x, key), data.y)
            if context.current is None:
                return GateResult(
                    self.name, True, {"candidate": candidate, "limit": limit},
                    f"{context.alias} points nowhere yet; {data.dataset} held-out accuracy "
                    f"{candidate:.4f}",
                )  # fmt: skip
            current = _accuracy(self.evaluator.predict(context.current, data.x, key), data.y)
        except EVALUATION_ERRORS as exc:
            return GateResult(self.name, False, {"limit": limit}, f"could not evaluate: {exc}")
        drop = current - candidate
        numbers: dict[str, float | None] = {
            "candidate": candidate, "current": current, "drop": drop, "limit": limit,
            "samples": float(len(data.y)),
        }  # fmt: skip
        passed = drop <= limit + 1e-12  # a drop of exactly the limit is allowed
        notes = self._notes(context, data)
        untouched = "" if notes else ", none of them trained on"
        message = (
            f"{data.dataset} held-out accuracy ({len(data.y)} test samples{untouched}) "
            f"{candidate:.4f} vs {current:.4f} ({-drop:+.4f}; at most -{limit:g} allowed)"
        )
        message += "".join(f"; note: {note}" for note in notes)
        return GateResult(self.name, passed, numbers, message)

    def _notes(self, context: GateContext, data: HeldOut) -> list[str]:
        """Why some held-out samples may be in the candidate's or the current version's
        training data (none: the numbers are on data neither learned from)."""
        notes = []
        theirs = context.candidate.config
        if theirs.get("dataset") != data.dataset or (theirs.get("split") or {}) != data.split:
            notes.append(
                f"{context.candidate.ref} was trained on other data or another split, "
                "so some of these samples may be in its training set"
            )
        for version in (context.candidate, context.current):
            learned = _retrained_on_heldout(self.evaluator.registry, version) if version else None
            if version is not None and learned is not None:
                via = (
                    "" if learned.version == version.version else f" ({version.ref} starts from it)"
                )
                notes.append(
                    f"{learned.ref}{via} was retrained before retraining left out requests "
                    "equal to held-out samples, so it may have learned some of these samples"
                )
        return notes


def _retrained_on_heldout(registry: Registry, version: ModelVersion) -> ModelVersion | None:
    """The version whose retraining may have learned held-out samples and whose weights
    `version` carries (itself, or an ancestor it was warm-started from), or None.

    Retraining records `excluded_heldout` since it leaves such requests out; a version
    retrained without that record may have trained on its parent's test split.
    """
    seen: set[int] = set()
    current: ModelVersion | None = version
    while current is not None and current.version not in seen:
        seen.add(current.version)
        info = current.config.get("retrain")
        if not isinstance(info, dict):
            return None  # trained on its data set alone: the test split was held out
        if "excluded_heldout" not in info:
            return current
        parent = current.lineage.parent_version if current.lineage else None
        if not info.get("warm_start") or parent is None:
            return None
        try:
            current = registry.get_version(current.name, parent)
        except KilnError:
            return None  # the parent was deleted: nothing more to know
    return None


class TrafficGate:
    name = "traffic-gain"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, context: GateContext) -> GateResult:
        if is_regression(context):
            return traffic_rmse(self.name, self.evaluator, context)
        t = self.evaluator.thresholds
        numbers: dict[str, Any] = {"samples": 0, "min_gain": t.min_traffic_gain}
        try:
            text = bool(context.candidate.config.get("text"))
            rows = self.evaluator.traffic(context.name, text=text)
            numbers["samples"] = len(rows)
            if len(rows) < t.min_traffic_samples:
                passed = t.min_traffic_gain <= 0
                verdict = "no gain required" if passed else "a gain is required"
                return GateResult(
                    self.name, passed, numbers,
                    f"only {len(rows)} held-out labelled requests in the last "
                    f"{t.traffic_window} (need {t.min_traffic_samples} to measure a gain; "
                    f"{verdict})",
                )  # fmt: skip
            candidate = _accuracy(
                self.evaluator.predict(context.candidate, rows.x, "traffic"), rows.y
            )
            if context.current is None:
                numbers["candidate"] = candidate
                return GateResult(
                    self.name, True, numbers,
                    f"{context.alias} points nowhere yet; accuracy on {len(rows)} held-out "
                    f"labelled requests {candidate:.4f}",
                )  # fmt: skip
            current = _accuracy(self.evaluator.predict(context.current, rows.x, "traffic"), rows.y)
        except EVALUATION_ERRORS as exc:
            return GateResult(self.name, False, numbers, f"could not evaluate: {exc}")
        gain = candidate - current
        numbers.update({"candidate": candidate, "current": current, "gain": gain})
        passed = gain >= t.min_traffic_gain - 1e-12  # exactly the required gain passes
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
    except EVALUATION_ERRORS:
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
        if context.current is None:
            return GateResult(self.name, True, numbers, f"{context.alias} points nowhere yet")
        if candidate is None or current is None:
            unmeasured = [
                v.ref
                for v, ms in ((context.candidate, candidate), (context.current, current))
                if ms is None
            ]
            return GateResult(
                self.name, True, numbers,
                f"no latency to compare: {' and '.join(unmeasured)} "
                f"{'was' if len(unmeasured) == 1 else 'were'} compiled without timing",
            )  # fmt: skip
        # 50 µs of slack: sub-millisecond timings on a busy host jitter by that much.
        passed = candidate <= current * budget + 0.05
        return GateResult(
            self.name,
            passed,
            numbers,
            f"batch-1 p50 {candidate:.3f} ms vs {current:.3f} ms (at most {budget:g}x allowed)",
        )


class ParityGate:
    name = "parity-passed"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, context: GateContext) -> GateResult:
        version = context.candidate
        # The engine a server here would load is the one that must be verified.
        try:
            artifact = choose_artifact(self.evaluator.registry, version.name, version.version)
        except EVALUATION_ERRORS as exc:
            return GateResult(
                self.name, False, {"verified": 0},
                f"{version.ref} has no engine to serve here ({exc}); run kiln compile "
                f"{version.ref}",
            )  # fmt: skip
        kind = artifact.artifact.kind.value
        parity = (artifact.artifact.report or {}).get("parity") or {}
        passed = parity.get("passed") is True
        held_out = parity.get("held_out") or []
        agreement = [p.get("top1_agreement") for p in held_out if isinstance(p, dict)]
        numbers: dict[str, float | None] = {
            "verified": 1.0 if passed else 0.0,
            "top1_agreement": min(
                (float(a) for a in agreement if isinstance(a, int | float)), default=None
            ),
        }
        if passed:
            return GateResult(
                self.name, True, numbers, f"{kind} engine of {version.ref} passed parity"
            )
        return GateResult(
            self.name, False, numbers,
            f"the {kind} engine of {version.ref} has no passed parity check; run kiln compile "
            f"{version.ref}",
        )  # fmt: skip


def evaluation_gates(
    registry: Registry, settings: Settings, thresholds: GateThresholds | None = None
) -> list[Gate]:
    """The gates `kiln promote` runs beside the recorded-accuracy gate: parity, held-out
    regression, traffic gain, latency. Raises `InvalidArgument` for bad thresholds."""
    thresholds = thresholds or GateThresholds()
    thresholds.validate()
    evaluator = Evaluator(registry, settings, thresholds)
    return [
        ParityGate(evaluator),
        HeldOutGate(evaluator),
        TrafficGate(evaluator),
        LatencyGate(evaluator),
    ]


__all__ = [
    "Evaluator",
    "GateThresholds",
    "HeldOut",
    "HeldOutGate",
    "LatencyGate",
    "ParityGate",
    "TrafficGate",
    "evaluation_gates",
    "unseen_holdout_mask",
]
