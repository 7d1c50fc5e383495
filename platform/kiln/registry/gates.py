"""Promotion gates: checks that run before an alias moves.

A gate is any callable taking a `GateContext` and returning a `GateResult`, with a `name`
attribute (the `Gate` protocol). `Registry.promote` runs every gate it is given (by default
`default_gates()`), stores all their results in the alias history, and refuses the move with
`GateFailed` when one fails, unless forced. Gates only read: they must not change the registry.

Later stages add gates here by passing more of them to `promote` (evaluation gates that run
the candidate on held-out data or on recent labelled traffic live in `kiln.evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kiln.errors import InvalidArgument
from kiln.registry.records import GateDecision, GateResult, ModelVersion

DEFAULT_ACCURACY_TOLERANCE = 0.005
"""How far (absolute) a candidate's test accuracy may fall below the current version's."""


@dataclass(frozen=True, slots=True)
class GateContext:
    """What a gate decides on: the candidate and what the alias points at now (if anything)."""

    name: str
    alias: str
    candidate: ModelVersion
    current: ModelVersion | None


@runtime_checkable
class Gate(Protocol):
    """A promotion check. Called once per promotion attempt; must not raise for a "no"."""

    @property
    def name(self) -> str: ...

    def __call__(self, context: GateContext) -> GateResult: ...


class AccuracyGate:
    """The candidate's recorded ``metrics[metric]`` must not fall below the current version's
    by more than `tolerance`.

    Passes when the alias points nowhere yet, or when the current version recorded no such
    metric (nothing to compare against); fails when the candidate recorded none.
    """

    def __init__(
        self, *, metric: str = "test_accuracy", tolerance: float = DEFAULT_ACCURACY_TOLERANCE
    ) -> None:
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise InvalidArgument(
                f"the {metric} gate's tolerance must be a finite number >= 0 (how far the "
                f"candidate's {metric} may fall below the current version's), got {tolerance}; "
                f"pass e.g. tolerance={DEFAULT_ACCURACY_TOLERANCE} (kiln promote --tolerance)"
            )
        self.metric = metric
        self.tolerance = tolerance

    @property
    def name(self) -> str:
        return f"{self.metric}-not-worse"

    def __call__(self, context: GateContext) -> GateResult:
        candidate = _number(context.candidate.metrics.get(self.metric))
        current = _number(context.current.metrics.get(self.metric)) if context.current else None
        numbers: dict[str, float | None] = {
            "candidate": candidate,
            "current": current,
            "tolerance": self.tolerance,
            "delta": None if candidate is None or current is None else candidate - current,
        }
        if context.current is None:
            return GateResult(self.name, True, numbers, f"{context.alias} points nowhere yet")
        if candidate is None:
            return GateResult(
                self.name,
                False,
                numbers,
                f"{context.candidate.ref} recorded no {self.metric} to compare with "
                f"{context.current.ref}",
            )
        if current is None:
            return GateResult(
                self.name,
                True,
                numbers,
                f"{context.current.ref} recorded no {self.metric}; nothing to compare",
            )
        delta = candidate - current
        passed = delta >= -self.tolerance
        relation = "within" if passed else "beyond"
        message = (
            f"{self.metric} {candidate:.4f} ({context.candidate.ref}) vs {current:.4f} "
            f"({context.current.ref}): {delta:+.4f}, {relation} tolerance {self.tolerance:g}"
        )
        return GateResult(self.name, passed, numbers, message)


RECORDED_RMSE = "test_rmse"
DEFAULT_RMSE_TOLERANCE = 0.02
"""How far (a fraction) a regressor's recorded test RMSE may rise over the current version's."""


def task_of(version: ModelVersion) -> str:
    """ "classification" or "regression": `config["task"]`, absent for classifiers."""
    return str(version.config.get("task") or "classification")


def task_mismatch(context: GateContext) -> str | None:
    """Why the candidate and the current version cannot be compared (different tasks), or
    None."""
    current = context.current
    if current is None or task_of(current) == task_of(context.candidate):
        return None
    return (
        f"{context.candidate.ref} is a {task_of(context.candidate)} model and "
        f"{current.ref} a {task_of(current)} model: their errors cannot be compared (register "
        "the new model under another name, or --force the move)"
    )


def relative_change(candidate: float, current: float) -> float:
    """(candidate - current) / current; 0 when both are 0, infinite when only current is."""
    if current == 0:
        return 0.0 if candidate == 0 else math.inf
    return (candidate - current) / current


class RecordedRmseGate:
    """The candidate's recorded `test_rmse` may exceed the current version's by at most
    `tolerance`, a fraction of it. Passes when the alias points nowhere yet or the current
    version recorded none; fails when the candidate recorded none."""

    name = f"{RECORDED_RMSE}-not-worse"

    def __init__(self, tolerance: float) -> None:
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise InvalidArgument(
                "max-heldout-rmse-increase is a fraction of the current version's RMSE, >= 0 "
                f"(e.g. 0.02 for 2%), got {tolerance}"
            )
        self.tolerance = tolerance

    def __call__(self, context: GateContext) -> GateResult:
        candidate = _number(context.candidate.metrics.get(RECORDED_RMSE))
        current = _number(context.current.metrics.get(RECORDED_RMSE)) if context.current else None
        numbers: dict[str, float | None] = {
            "candidate": candidate, "current": current, "tolerance": self.tolerance,
        }  # fmt: skip
        if context.current is None:
            return GateResult(self.name, True, numbers, f"{context.alias} points nowhere yet")
        mismatch = task_mismatch(context)
        if mismatch:
            return GateResult(self.name, False, numbers, mismatch)
        if candidate is None:
            return GateResult(
                self.name, False, numbers,
                f"{context.candidate.ref} recorded no {RECORDED_RMSE} to compare with "
                f"{context.current.ref} (kiln register --metrics records one)",
            )  # fmt: skip
        if current is None:
            return GateResult(
                self.name, True, numbers,
                f"{context.current.ref} recorded no {RECORDED_RMSE}; nothing to compare",
            )  # fmt: skip
        increase = relative_change(candidate, current)
        passed = increase <= self.tolerance + 1e-12
        relation = "within" if passed else "beyond"
        return GateResult(
            self.name, passed, numbers | {"increase": increase},
            f"{RECORDED_RMSE} {candidate:.4g} ({context.candidate.ref}) vs {current:.4g} "
            f"({context.current.ref}): {increase:+.2%}, {relation} +{self.tolerance:.2%}",
        )  # fmt: skip


def default_gates(
    *,
    accuracy_tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
    rmse_tolerance: float = DEFAULT_RMSE_TOLERANCE,
    task: str = "classification",
) -> list[Gate]:
    """The gates `promote` runs when it is given none, for a candidate of `task`: its
    recorded test accuracy (a classifier) or test RMSE (a regressor) no worse than the
    current version's."""
    if task == "regression":
        return [RecordedRmseGate(rmse_tolerance)]
    return [AccuracyGate(tolerance=accuracy_tolerance)]


def run_gates(gates: Sequence[Gate], context: GateContext, *, force: bool) -> GateDecision:
    """Run every gate (all of them, so the decision shows every number) and collect results."""
    results = tuple(gate(context) for gate in gates)
    failed = any(not r.passed for r in results)
    return GateDecision(results=results, forced=force and failed)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
