"""Online evaluation of a regression model on real Parquet traffic and feedback: MAE, RMSE and
residuals computed by hand below, prediction drift against the reference's predicted values,
and input drift per feature of the numeric inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from kiln.data.profile import feature_summary, input_profile
from kiln.evaluate import Evaluation, VersionInfo, evaluate_traffic, render_html
from kiln.evaluate.drift import ValueDrift
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord, TrafficSettings, Window
from kiln.traffic.layout import write_part
from kiln.traffic.schema import FEEDBACK_SCHEMA

NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = Window(NOW - timedelta(hours=1), NOW + timedelta(hours=1))
FEATURES = 4

# id: (version, route, predicted value, true value or None)
SERVED: dict[str, tuple[int, str, float, float | None]] = {
    "p1": (1, "primary", 10.0, 12.0),  # residual -2
    "p2": (1, "primary", 5.0, 4.0),  # +1
    "p3": (1, "primary", 7.5, 7.5),  # 0
    "p4": (1, "primary", 3.0, None),
    "c1": (2, "canary", 20.0, 16.0),  # +4
    "c2": (2, "canary", 1.0, None),
}


def reference(rng: np.random.Generator, predicted: np.ndarray) -> dict[str, Any]:
    """A regressor's reference profile as contract 6 of #15 defines it."""
    x = rng.normal(size=(400, FEATURES)).astype(np.float32)
    return {
        "format": 1,
        "inputs": input_profile(x, [FEATURES]),
        "predictions": {
            "samples": len(predicted),
            "task": "regression",
            "value": feature_summary(predicted),
            "rmse": 1.25,
        },
    }


def log(home: Path, rows: dict[str, tuple[int, str, float, float | None]], seed: int = 0) -> None:
    ts = int((NOW - timedelta(minutes=30)).timestamp() * 1e6)
    rng = np.random.default_rng(seed)
    settings = TrafficSettings(flush_interval_s=60)
    with TrafficLogger(home, settings) as logger, FeedbackWriter(home, settings) as fb:
        for i, (rid, (version, route, predicted, truth)) in enumerate(rows.items()):
            record = TrafficRecord(rid, ts + i, "prices", version, 100 * (i + 1), route=route)
            record.input = rng.normal(size=(1, FEATURES)).astype(np.float32)
            record.output = np.array([[predicted]], dtype=np.float32)
            logger.log(record)
            if truth is not None:
                fb.add(rid, value=truth, model="prices")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    home = tmp_path_factory.mktemp("regression")
    log(home, SERVED)
    # A batch of two samples: no one-sample prediction, so its value is not joined.
    with TrafficLogger(home) as logger, FeedbackWriter(home) as fb:
        record = TrafficRecord("batch", int(NOW.timestamp() * 1e6) - 10, "prices", 1, 5)
        record.output = np.array([[1.0], [2.0]], dtype=np.float32)
        logger.log(record)
        fb.add("batch", value=1.0)
        fb.add("ghost", value=3.0)  # no such request
    rng = np.random.default_rng(1)
    versions = {
        v: VersionInfo(v, [], reference(rng, rng.normal(8, 4, 300)), task="regression")
        for v in (1, 2)
    }
    return evaluate_traffic(home, "prices", WINDOW, versions)


def test_errors_per_version_and_route(evaluation: Evaluation) -> None:
    assert evaluation.regression is not None
    assert evaluation.accuracy == [] and evaluation.versions == []  # no classifier served
    rows = {(e.version, e.route): e for e in evaluation.regression.errors}
    primary, canary = rows[(1, "primary")], rows[(2, "canary")]
    assert (primary.requests, primary.answered, primary.labelled) == (5, 5, 3)
    assert primary.mae == pytest.approx((2 + 1 + 0) / 3)
    assert primary.rmse == pytest.approx(np.sqrt((4 + 1 + 0) / 3))
    assert primary.label_coverage == pytest.approx(3 / 5)
    assert (canary.labelled, canary.mae, canary.rmse) == (1, pytest.approx(4), pytest.approx(4))
    assert evaluation.labelled == 4
    assert evaluation.feedback.unmatched == 1
    assert evaluation.feedback.unmatched_examples == ["ghost"]
    # Summary lines call a regressor's feedback values, not labels.
    assert evaluation.feedback_items == "value(s)"


def test_residual_summary(evaluation: Evaluation) -> None:
    assert evaluation.regression is not None
    v1 = evaluation.regression.of(1)
    assert v1 is not None and v1.residuals is not None
    assert v1.residuals.mean == pytest.approx((-2 + 1 + 0) / 3)
    assert v1.residuals.abs_p50 == pytest.approx(1.0)
    assert v1.residuals.abs_p90 == pytest.approx(np.quantile([2, 1, 0], 0.9))
    assert v1.residuals.abs_max == pytest.approx(2.0)
    assert v1.reference_rmse == pytest.approx(1.25)


def test_json_and_html_carry_the_regression(evaluation: Evaluation) -> None:
    report = evaluation.to_dict()
    assert [e["rmse"] is not None for e in report["regression"]["errors"]] == [True, True]
    assert report["regression"]["versions"][0]["residuals"]["abs_p50"] == pytest.approx(1.0)
    assert report["regression"]["error_over_time"]
    drift = report["drift"]["versions"][0]
    # Too few predictions to judge drift: said so, with the task.
    assert drift["predictions"] == {
        "samples": 4,
        "judged": False,
        "task": "regression",
        "note": "4 prediction(s), fewer than the 100 needed",
    }
    page = render_html(evaluation)
    assert "Errors by version and route (regression)" in page and "RMSE over time" in page
    assert "Accuracy by version and route" not in page
    assert "1 unmatched feedback value(s)" in page


@pytest.mark.parametrize(("shift", "drifted"), [(0.0, False), (6.0, True)])
def test_prediction_drift_against_the_reference_values(
    tmp_path: Path, shift: float, drifted: bool
) -> None:
    rng = np.random.default_rng(3)
    held_out = rng.normal(8, 2, 2000)
    served = rng.normal(8 + shift, 2, 300)
    log(tmp_path, {f"r{i}": (1, "primary", float(v), None) for i, v in enumerate(served)})
    versions = {1: VersionInfo(1, [], reference(rng, held_out), task="regression")}
    result = evaluate_traffic(tmp_path, "prices", WINDOW, versions)
    drift = result.drift.of(1)
    assert drift is not None and isinstance(drift.predictions, ValueDrift)
    assert drift.predictions.judged and drift.predictions.samples == 300
    assert drift.predictions.drifted is drifted
    value = drift.predictions.value
    assert value is not None and value.current_mean == pytest.approx(served.mean(), rel=1e-5)
    # Inputs are the same distribution as the reference's: judged per feature, stable.
    assert drift.inputs is not None and drift.inputs.judged
    assert [f.name for f in drift.inputs.features] == [f"x[{i}]" for i in range(FEATURES)]
    assert drift.inputs.drifted == []
    assert drift.drift is drifted


def test_a_non_finite_value_in_a_hand_made_file_is_counted_not_used(tmp_path: Path) -> None:
    log(tmp_path, {"a": (1, "primary", 1.0, 2.0)})
    # After the writer's value, which is stamped with the clock when the test runs (NOW is
    # taken when the module is collected, possibly many minutes earlier in a full run).
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    bad = pl.DataFrame(
        {"request_id": ["a"], "label": [None], "received_at": [later], "source": ["file:x"],
         "model": ["prices"], "value": [float("nan")]},
    ).with_columns(pl.col("received_at").dt.cast_time_unit("us"))  # fmt: skip
    values = bad.cast(dict(FEEDBACK_SCHEMA))  # type: ignore[arg-type]
    write_part(tmp_path / "feedback" / f"date={later.date()}", values)
    versions = {1: VersionInfo(1, [], {}, task="regression")}
    window = Window(WINDOW.since, later + timedelta(hours=1))
    result = evaluate_traffic(tmp_path, "prices", window, versions)
    assert result.regression is not None
    assert result.regression.feedback_values_invalid == 1
    v1 = result.regression.of(1)
    # As with labels, the last value received wins; a NaN is no value, so nothing is judged.
    assert v1 is not None and v1.labelled == 0 and v1.rmse is None and v1.residuals is None
