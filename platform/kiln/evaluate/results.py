"""What `evaluate_traffic` returns: a model's online evaluation over a traffic window, typed.

`Evaluation.to_dict()` is the JSON object `kiln evaluate --json` prints (datetimes left as
such: the CLI's encoder writes them in ISO 8601); the HTML report and `kiln loop` read the
typed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from kiln.evaluate.drift import DriftThresholds, InputDrift, PredictionDrift, ValueDrift
from kiln.evaluate.text_drift import TextDrift


@dataclass(frozen=True)
class FeedbackMatch:
    """Labels of the window that name no logged request of the model."""

    unmatched: int
    unmatched_examples: list[str]
    """The first few of their request ids, sorted."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GroupAccuracy:
    """Requests, labels and accuracy of one version on one route (primary, canary, shadow)."""

    version: int | None
    route: str | None
    requests: int
    answered: int
    labelled: int
    correct: int
    accuracy: float | None
    """None without labelled requests."""
    label_coverage: float | None
    """Labelled share of the answered requests; None when none was answered."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassAccuracy:
    index: int
    name: str
    labelled: int
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.index,
            "name": self.name,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class Confusion:
    """The confusion matrix (rows: truth, columns: prediction), whole for up to
    `online.MAX_DENSE_CLASSES` classes; beyond, only its non-zero cells."""

    classes: list[str] | None
    matrix: list[list[int]] | None
    cells: list[list[int]] | None = None
    """[truth, prediction, count] per non-zero cell, when the matrix is too large to list."""
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        sparse = {} if self.cells is None else {"cells": self.cells, "note": self.note}
        return {"classes": self.classes, "matrix": self.matrix, **sparse}


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    accuracy: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    ece: float
    """Expected calibration error over equal-width confidence bins."""
    bins: list[CalibrationBin]
    """The bins that hold predictions."""

    def to_dict(self) -> dict[str, Any]:
        return {"ece": self.ece, "bins": [b.to_dict() for b in self.bins]}


@dataclass(frozen=True)
class VersionMetrics:
    """One version on its labelled requests."""

    version: int
    labelled: int
    accuracy: float | None
    classes: int
    per_class: list[ClassAccuracy]
    confusion: Confusion
    calibration: Calibration

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "classes": self.classes,
            "per_class": [c.to_dict() for c in self.per_class],
            "confusion": self.confusion.to_dict(),
            "calibration": self.calibration.to_dict(),
        }


@dataclass(frozen=True)
class GroupError:
    """Requests, true values and errors of one regression version on one route."""

    version: int | None
    route: str | None
    requests: int
    answered: int
    labelled: int
    """Answered one-sample requests with a true value."""
    mae: float | None
    """Mean absolute error; None without labelled requests."""
    rmse: float | None
    label_coverage: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Residuals:
    """Residuals (predicted minus true value) of a regression version's labelled requests."""

    mean: float
    """The bias: above 0, the version predicts too high on average."""
    abs_p50: float
    """Median absolute residual."""
    abs_p90: float
    abs_max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionErrors:
    """One regression version on its labelled requests (all routes)."""

    version: int
    labelled: int
    mae: float | None
    rmse: float | None
    residuals: Residuals | None
    """None without labelled requests."""
    reference_rmse: float | None = None
    """RMSE on held-out data at training, when the reference profile recorded it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "labelled": self.labelled,
            "mae": self.mae,
            "rmse": self.rmse,
            "residuals": None if self.residuals is None else self.residuals.to_dict(),
            "reference_rmse": self.reference_rmse,
        }


@dataclass(frozen=True)
class ErrorPoint:
    """RMSE of one regression version's labelled requests in one time bucket."""

    start: datetime
    version: int | None
    labelled: int
    rmse: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Regression:
    """The regression part of an evaluation: errors per version and route, per version, and
    over time; present when a regression version served in the window."""

    errors: list[GroupError]
    versions: list[VersionErrors]
    error_over_time: list[ErrorPoint]
    feedback_values_invalid: int
    """Feedback values that are no finite number (a hand-made file)."""

    def of(self, version: int) -> VersionErrors | None:
        return next((v for v in self.versions if v.version == version), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "errors": [e.to_dict() for e in self.errors],
            "versions": [v.to_dict() for v in self.versions],
            "error_over_time": [p.to_dict() for p in self.error_over_time],
            "feedback_values_invalid": self.feedback_values_invalid,
        }


@dataclass(frozen=True)
class AccuracyPoint:
    """Accuracy of one version's labelled requests in one time bucket."""

    start: datetime
    version: int | None
    labelled: int
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionDrift:
    """Drift of one served version against its training reference; without a reference
    (`note` says why) nothing is measured."""

    version: int
    drift: bool
    note: str | None = None
    inputs: InputDrift | None = None
    predictions: PredictionDrift | ValueDrift | None = None
    """Class mix and confidence of a classifier; predicted values of a regressor."""
    text: TextDrift | None = None
    """A text version's texts (length, unknown tokens, token frequencies); its `inputs` are
    None (a text has no numeric input features)."""

    def to_dict(self) -> dict[str, Any]:
        head = {"version": self.version, "drift": self.drift}
        if self.text is not None and self.predictions is not None:
            return head | {"text": self.text.to_dict(), "predictions": self.predictions.to_dict()}
        if self.inputs is None or self.predictions is None:
            return head | {"note": self.note}
        return head | {"inputs": self.inputs.to_dict(), "predictions": self.predictions.to_dict()}


@dataclass(frozen=True)
class DriftReport:
    thresholds: DriftThresholds
    sample_size: int
    """Logged inputs examined per evaluation at most."""
    versions: list[VersionDrift]

    @property
    def detected(self) -> bool:
        return any(v.drift for v in self.versions)

    def of(self, version: int) -> VersionDrift | None:
        return next((d for d in self.versions if d.version == version), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds.as_dict(),
            "sample_size": self.sample_size,
            "versions": [v.to_dict() for v in self.versions],
        }


@dataclass(frozen=True)
class OutOfRange:
    """A labelled request left out: its label or prediction is no class of its version."""

    request_id: str
    version: int | None
    label: int
    prediction: int
    classes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SkippedRows:
    """Rows the evaluation could not use, counted by reason (never an error)."""

    labels_out_of_range: int
    predictions_out_of_range: int
    out_of_range_examples: list[OutOfRange]
    feedback_labels_invalid: int
    """Feedback labels that are no class index at all (negative, beyond any model's)."""
    inputs: dict[str, int]
    """Logged inputs left out of input drift, by reason."""
    predictions_for_drift: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels_out_of_range": self.labels_out_of_range,
            "predictions_out_of_range": self.predictions_out_of_range,
            "out_of_range_examples": [e.to_dict() for e in self.out_of_range_examples],
            "feedback_labels_invalid": self.feedback_labels_invalid,
            "inputs": self.inputs,
            "predictions_for_drift": self.predictions_for_drift,
        }


@dataclass(frozen=True)
class Evaluation:
    """The online evaluation of `model` over [since, until)."""

    model: str
    since: datetime
    until: datetime
    requests: int
    answered: int
    labelled: int
    """Answered one-sample requests with a usable label (or, served by a regression version,
    a true value)."""
    feedback: FeedbackMatch
    accuracy: list[GroupAccuracy]
    versions: list[VersionMetrics]
    """Per version with labelled requests, in version order."""
    bucket: str
    """The width of a time bucket (a Polars duration, e.g. "5m")."""
    accuracy_over_time: list[AccuracyPoint]
    latency: list[Mapping[str, Any]]
    """Per version and route (`kiln.traffic.traffic_stats`)."""
    latency_over_time: list[Mapping[str, Any]]
    drift: DriftReport
    skipped_rows: SkippedRows
    files: int
    """Traffic part files read."""
    skipped_files: dict[str, str]
    """Damaged or foreign files left out, by path: why."""
    files_without_checksums: int
    regression: Regression | None = None
    """Errors of the regression versions served (None when none served): `accuracy` and
    `versions` hold the classification versions only."""

    @property
    def label_coverage(self) -> float | None:
        return self.labelled / self.answered if self.answered else None

    @property
    def drift_detected(self) -> bool:
        return self.drift.detected

    @property
    def feedback_items(self) -> str:
        """What this window's feedback is, for summary lines: label(s) for classifiers,
        value(s) when only regression versions served, and both words when both kinds did."""
        if self.regression is None:
            return "label(s)"
        return "label(s) or value(s)" if self.accuracy else "value(s)"

    def metrics_of(self, version: int) -> VersionMetrics | None:
        return next((v for v in self.versions if v.version == version), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "since": self.since,
            "until": self.until,
            "requests": self.requests,
            "answered": self.answered,
            "labelled": self.labelled,
            "label_coverage": self.label_coverage,
            "feedback": self.feedback.to_dict(),
            "accuracy": [a.to_dict() for a in self.accuracy],
            "versions": [v.to_dict() for v in self.versions],
            "bucket": self.bucket,
            "accuracy_over_time": [p.to_dict() for p in self.accuracy_over_time],
            "latency": self.latency,
            "latency_over_time": self.latency_over_time,
            "drift": self.drift.to_dict(),
            "drift_detected": self.drift_detected,
            "skipped_rows": self.skipped_rows.to_dict(),
            "files": self.files,
            "skipped_files": self.skipped_files,
            "skipped_file_count": len(self.skipped_files),
            "files_without_checksums": self.files_without_checksums,
            **({} if self.regression is None else {"regression": self.regression.to_dict()}),
        }
