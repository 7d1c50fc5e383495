"""The promotion gates' rules for regression models, judged by RMSE (lower is better).

- held-out: the candidate's RMSE on the held-out test split of the current version's data
  set may exceed the current version's by at most `max_heldout_rmse_increase`, a fraction of
  it (0.02: at most 2% higher);
- traffic: on the held-out slice of recent requests with true values, the candidate's RMSE
  must fall by at least `min_traffic_gain`, again a fraction of the current version's
  ((current - candidate) / current >= min_traffic_gain; 0: it must not rise);
- recorded: the candidate's recorded `test_rmse` (what `kiln train` measured) may exceed the
  current version's by at most `max_heldout_rmse_increase` too.

A candidate and a current version of different tasks cannot be compared: the gates fail and
say so (force the move, or register the new model under another name).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from kiln.evaluate.evaluator import EVALUATION_ERRORS, Evaluator, HeldOut
from kiln.registry import GateContext, GateResult
from kiln.registry.gates import relative_change, task_mismatch, task_of
from kiln.traffic.labels import REGRESSION


def is_regression(context: GateContext) -> bool:
    """Whether the candidate is a regression model (its gates judge RMSE)."""
    return task_of(context.candidate) == REGRESSION


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    error = np.asarray(predicted, np.float64) - np.asarray(truth, np.float64)
    return float(np.sqrt(np.mean(error**2))) if error.size else math.nan


def heldout_rmse(
    name: str,
    evaluator: Evaluator,
    context: GateContext,
    notes: Callable[[GateContext, HeldOut], list[str]],
) -> GateResult:
    """The held-out gate for a regression candidate (see the module's docstring)."""
    limit = evaluator.thresholds.max_heldout_rmse_increase
    mismatch = task_mismatch(context)
    if mismatch:
        return GateResult(name, False, {"limit": limit}, mismatch)
    judged_by = context.current or context.candidate
    try:
        data = evaluator.held_out(judged_by)
        key = f"held-out:{data.dataset}:{sorted(data.split.items())}"
        candidate = rmse(evaluator.values(context.candidate, data.x, key), data.y)
        if context.current is None:
            return GateResult(
                name, True, {"candidate": candidate, "limit": limit},
                f"{context.alias} points nowhere yet; {data.dataset} held-out RMSE "
                f"{candidate:.4g}",
            )  # fmt: skip
        current = rmse(evaluator.values(context.current, data.x, key), data.y)
    except EVALUATION_ERRORS as exc:
        return GateResult(name, False, {"limit": limit}, f"could not evaluate: {exc}")
    increase = relative_change(candidate, current)
    numbers: dict[str, float | None] = {
        "candidate": candidate, "current": current, "increase": increase, "limit": limit,
        "samples": float(len(data.y)),
    }  # fmt: skip
    passed = increase <= limit + 1e-12  # exactly the limit is allowed
    found = notes(context, data)
    untouched = "" if found else ", none of them trained on"
    message = (
        f"{data.dataset} held-out RMSE ({len(data.y)} test samples{untouched}) "
        f"{candidate:.4g} vs {current:.4g} ({increase:+.2%}; at most +{limit:.2%} allowed)"
    )
    return GateResult(name, passed, numbers, message + "".join(f"; note: {n}" for n in found))


def traffic_rmse(name: str, evaluator: Evaluator, context: GateContext) -> GateResult:
    """The traffic gate for a regression candidate (see the module's docstring)."""
    t = evaluator.thresholds
    numbers: dict[str, Any] = {"samples": 0, "min_gain": t.min_traffic_gain}
    mismatch = task_mismatch(context)
    if mismatch:
        return GateResult(name, False, numbers, mismatch)
    try:
        rows = evaluator.traffic(context.name, REGRESSION)
        numbers["samples"] = len(rows)
        if len(rows) < t.min_traffic_samples:
            passed = t.min_traffic_gain <= 0
            verdict = "no gain required" if passed else "a gain is required"
            return GateResult(
                name, passed, numbers,
                f"only {len(rows)} held-out requests with true values in the last "
                f"{t.traffic_window} (need {t.min_traffic_samples} to measure a gain; "
                f"{verdict})",
            )  # fmt: skip
        candidate = rmse(evaluator.values(context.candidate, rows.x, "traffic"), rows.y)
        if context.current is None:
            numbers["candidate"] = candidate
            return GateResult(
                name, True, numbers,
                f"{context.alias} points nowhere yet; RMSE on {len(rows)} held-out requests "
                f"with true values {candidate:.4g}",
            )  # fmt: skip
        current = rmse(evaluator.values(context.current, rows.x, "traffic"), rows.y)
    except EVALUATION_ERRORS as exc:
        return GateResult(name, False, numbers, f"could not evaluate: {exc}")
    gain = -relative_change(candidate, current)  # the fraction by which the RMSE fell
    numbers.update({"candidate": candidate, "current": current, "gain": gain})
    passed = gain >= t.min_traffic_gain - 1e-12
    moved = f"fell by {gain:.2%}" if gain >= 0 else f"rose by {-gain:.2%}"
    required = (
        "must not rise"
        if t.min_traffic_gain == 0
        else f"must fall by at least {t.min_traffic_gain:.2%}"
    )
    return GateResult(
        name,
        passed,
        numbers,
        f"RMSE on {len(rows)} held-out requests with true values {candidate:.4g} vs "
        f"{current:.4g}: {moved} ({required})",
    )
