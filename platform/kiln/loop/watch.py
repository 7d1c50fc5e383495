"""`kiln loop`: watch a model's production traffic and retrain when it stops being good.

Each round reads the online evaluation of the production version over the policy's window
(accuracy, or a regressor's RMSE, on labelled traffic; input and prediction drift). When the
accuracy falls below the policy's floor, a regressor's RMSE rises past the one recorded at
training by more than the policy allows, or drift is flagged, and enough labels arrived since
the last retraining, it retrains (`kiln.loop.retrain`), then either promotes the candidate
through the evaluation gates (`approve="auto"`) or leaves it at `candidate` for a person
(`approve="manual"`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kiln.errors import FailedPrecondition, GateFailed, InvalidArgument, KilnError
from kiln.evaluate import evaluate_traffic, version_infos
from kiln.evaluate.gates import GateThresholds, evaluation_gates
from kiln.evaluate.results import Regression
from kiln.loop.retrain import RetrainOptions, retrain
from kiln.registry import ModelVersion, Registry, default_gates, task_of
from kiln.settings import Settings
from kiln.traffic import Window, log_store

Say = Callable[[str], None]


@dataclass(frozen=True)
class LoopPolicy:
    since: str = "24h"
    """The traffic window each round evaluates and retrains on."""
    min_labels: int = 100
    """New labelled requests needed before retraining."""
    min_accuracy: float = 0.9
    """Retrain when production's accuracy on labelled traffic falls below this."""
    max_rmse_increase: float = 0.1
    """Retrain a regressor when its RMSE on labelled traffic exceeds the held-out RMSE recorded
    at training by more than this fraction."""
    on_drift: bool = True
    """Retrain when input or prediction drift is flagged (with enough labels)."""
    approve: Literal["auto", "manual"] = "auto"
    """auto: promote when the gates pass; manual: leave the candidate for `kiln promote`."""
    interval_s: float = 60.0
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    def validate(self) -> None:
        if self.approve not in ("auto", "manual"):
            raise InvalidArgument(f"--approve must be auto or manual, got '{self.approve}'")
        if not 0 <= self.min_accuracy <= 1:
            raise InvalidArgument(f"--min-accuracy must be in [0, 1], got {self.min_accuracy}")
        if not self.max_rmse_increase >= 0:
            raise InvalidArgument(
                f"--max-rmse-increase must be >= 0 (a fraction), got {self.max_rmse_increase}"
            )
        if self.interval_s <= 0:
            raise InvalidArgument(f"--interval must be positive, got {self.interval_s}")


@dataclass
class Round:
    """What one round saw and did."""

    production: int | None = None
    accuracy: float | None = None
    rmse: float | None = None
    """A regressor's RMSE on labelled traffic (classifiers: None)."""
    labelled: int = 0
    new_labels: int = 0
    drift: bool = False
    reasons: list[str] = field(default_factory=list)
    action: str = "none"
    """none | waiting-for-labels | retrained | promoted | refused-by-gates | awaiting-approval"""
    candidate: str | None = None
    retrain: dict[str, Any] | None = None
    """What retraining used and left out (`RetrainResult.to_dict()`), when this round retrained."""
    gates: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _last_retrain_until(registry: Registry, name: str) -> datetime | None:
    """End of the traffic window the newest retrained version learned from."""
    for version in reversed(registry.list_versions(name)):  # newest first
        until = (version.config.get("retrain") or {}).get("until")
        if until:
            return datetime.fromisoformat(str(until))
    return None


def _rmse_reason(
    current: Round, regression: Regression | None, production: ModelVersion, increase: float
) -> None:
    """Add the reason to retrain a regressor whose traffic RMSE rose past its training RMSE."""
    errors = regression.of(production.version) if regression is not None else None
    current.rmse = errors.rmse if errors is not None else None
    recorded = production.metrics.get("test_rmse")
    reference = errors.reference_rmse if errors is not None else None
    if reference is None and isinstance(recorded, int | float):
        reference = float(recorded)
    if current.rmse is None or reference is None:
        return
    if current.rmse > reference * (1 + increase):
        current.reasons.append(
            f"RMSE {current.rmse:.4g} on labelled traffic > {reference:.4g} at training "
            f"+{increase:.0%}"
        )


def check_once(registry: Registry, name: str, settings: Settings, policy: LoopPolicy,
               say: Say) -> Round:  # fmt: skip
    """One round: evaluate, decide, maybe retrain and promote."""
    current = Round()
    production = registry.resolve(f"{name}@production")
    current.production = production.version
    window = Window.last(policy.since)
    infos = version_infos(registry, name)
    try:
        report = evaluate_traffic(log_store(settings), name, window, infos)
    except KilnError as exc:
        current.message = f"no evaluation yet: {exc.message}"
        return current
    metrics = report.metrics_of(production.version)
    current.accuracy = metrics.accuracy if metrics else None
    current.labelled = report.labelled
    drift = report.drift.of(production.version)
    current.drift = bool(drift and drift.drift)
    if current.accuracy is not None and current.accuracy < policy.min_accuracy:
        current.reasons.append(
            f"accuracy {current.accuracy:.3f} on labelled traffic < {policy.min_accuracy:g}"
        )
    _rmse_reason(current, report.regression, production, policy.max_rmse_increase)
    if policy.on_drift and current.drift:
        current.reasons.append("drift flagged against the training reference")
    if not current.reasons:
        current.message = f"{production.ref} is fine"
        return current

    last = _last_retrain_until(registry, name)
    since = max(window.since, last) if last else window.since
    fresh = Window(since, window.until)
    try:
        current.new_labels = evaluate_traffic(log_store(settings), name, fresh, infos).labelled
    except KilnError:
        current.new_labels = 0
    if current.new_labels < policy.min_labels:
        current.action = "waiting-for-labels"
        current.message = (
            f"{'; '.join(current.reasons)}; {current.new_labels} new labels since "
            f"{since:%Y-%m-%d %H:%M} UTC, waiting for {policy.min_labels}"
        )
        return current

    say(f"retraining {name}: {'; '.join(current.reasons)}")
    result = retrain(
        registry, name, settings,
        RetrainOptions(since=policy.since, min_labels=policy.min_labels, show_progress=False),
        progress=say,
    )  # fmt: skip
    current.candidate = result.version.ref
    current.retrain = result.to_dict()
    current.action = "retrained"
    trained = (
        f"trained on {result.trained_on} labelled requests, {result.excluded_heldout} excluded "
        f"as equal to samples of {result.parent.ref}'s held-out test split"
    )
    if policy.approve == "manual":
        current.action = "awaiting-approval"
        current.message = (
            f"{result.version.ref} ({trained}) is the candidate: kiln promote {result.version.ref}"
        )
        return current
    gates = default_gates(task=task_of(result.version)) + evaluation_gates(
        registry, settings, policy.thresholds
    )
    try:
        move = registry.promote(result.version.ref, "production", reason="kiln loop", gates=gates)
    except GateFailed as exc:
        current.action = "refused-by-gates"
        current.message = exc.message
        return current
    current.action = "promoted"
    current.gates = [g.to_dict() for g in (move.gate.results if move.gate else ())]
    current.message = f"promoted {result.version.ref} ({trained}) to production"
    return current


def run_loop(
    registry: Registry,
    name: str,
    settings: Settings,
    policy: LoopPolicy,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    say: Say = lambda _: None,
    report: Callable[[Round], None] = lambda _: None,
) -> list[Round]:
    """Run rounds every `policy.interval_s` until `stop` is set (one round when `once`)."""
    policy.validate()
    stop = stop or threading.Event()
    rounds = []
    while True:
        try:
            current = check_once(registry, name, settings, policy, say)
        except FailedPrecondition as exc:  # e.g. the parent's data set is gone: say, go on
            current = Round(action="error", message=exc.message)
        rounds.append(current)
        report(current)
        if once or stop.wait(policy.interval_s):
            return rounds
