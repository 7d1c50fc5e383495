"""Online evaluation: served traffic joined with ground truth, and drift against the reference.

`evaluate_traffic` reads the model's traffic in a window and the feedback received in it (lazy
scans; the heavy part, the join on request id, streams), then computes on the labelled part:
accuracy per version and route, per-class accuracy, confusion matrix, calibration (expected
calibration error, 15 equal-width confidence bins, as `kiln train` reports it), label
coverage, accuracy over time; for regression versions, MAE and RMSE per version and route and
residuals (`kiln.evaluate.regression`); and drift of inputs and predictions per version
(`kiln.evaluate.served_drift`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl

from kiln.evaluate.drift import DriftThresholds, PredictionDrift
from kiln.evaluate.groups import coverage, scored_groups
from kiln.evaluate.regression import error_over_time, errors_by_group, join_values, version_errors
from kiln.evaluate.results import (
    AccuracyPoint,
    Calibration,
    CalibrationBin,
    ClassAccuracy,
    Confusion,
    Evaluation,
    FeedbackMatch,
    GroupAccuracy,
    OutOfRange,
    Regression,
    SkippedRows,
    VersionMetrics,
)
from kiln.evaluate.served_drift import served_drift
from kiln.evaluate.version_info import VersionInfo
from kiln.traffic import (
    STATUS_OK,
    LogRoot,
    Scan,
    Window,
    latest_labels,
    run_query,
    scan_feedback,
    scan_traffic,
    traffic_stats,
)
from kiln.traffic.stats import Bucket, bucket_for
from kiln.traffic.validity import index_below, label_in_range, output_width

__all__ = ["VersionInfo", "evaluate_traffic", "expected_calibration_error"]

ECE_BINS = 15
SAMPLE_SIZE = 50_000
MAX_DENSE_CLASSES = 1024
"""Up to this many classes the confusion matrix is reported whole (classes x classes);
beyond, only its non-zero cells: a 100,000-class matrix would take 80 GB."""
EXAMPLES = 5


def expected_calibration_error(
    confidence: np.ndarray[Any, Any], correct: np.ndarray[Any, Any], bins: int = ECE_BINS
) -> Calibration:
    """ECE over `bins` equal-width confidence bins (lo, hi], and the bins themselves."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece, rows = 0.0, []
    n = len(confidence)
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (confidence > lo) & (confidence <= hi)
        count = int(inside.sum())
        if not count:
            continue
        acc = float(correct[inside].mean())
        conf = float(confidence[inside].mean())
        ece += count / n * abs(acc - conf)
        rows.append(CalibrationBin(float(lo), float(hi), count, acc, conf))
    return Calibration(float(ece), rows)


def evaluate_traffic(
    home: LogRoot,
    model: str,
    window: Window,
    versions: Mapping[int, VersionInfo],
    *,
    thresholds: DriftThresholds | None = None,
    sample_size: int = SAMPLE_SIZE,
    points: int = 24,
) -> Evaluation:
    """The online evaluation of `model` over `window` (`Evaluation.to_dict()` for JSON).

    `versions` gives tasks, class names and reference profiles; versions missing from it are
    evaluated as classifiers without drift (noted in the result), their classes taken from
    the width of their logged outputs. Regression versions (`VersionInfo.task`) are judged on
    feedback values, under `Evaluation.regression`. Rows that cannot be used (a label outside
    the version's classes, a logged input whose values do not match its shape, ...) are left
    out and counted under `skipped_rows`; damaged or foreign files under `skipped_files`.
    Raises `TrafficNotFound` when the model never logged traffic here.
    """
    t = thresholds or DriftThresholds()
    traffic = scan_traffic(home, model, window)
    feedback = scan_feedback(home, window)
    bucket = bucket_for(window, points)
    known = {v for v, info in versions.items() if info.classes}
    regressors = sorted(v for v, info in versions.items() if info.regression)
    by_regressor = pl.col("version").is_in(regressors).fill_null(False)
    counts, hits, unmatched, invalid_feedback = run_query(
        lambda: _join(traffic, feedback, model, known), traffic, feedback
    )
    labelled, out_of_range = _checked(hits.filter(~by_regressor), versions)
    stats = traffic_stats(home, model, window, points=points)
    requests = int(counts["requests"].sum()) if counts.height else 0
    answered = int(counts["answered"].sum()) if counts.height else 0
    drift = run_query(lambda: served_drift(traffic, counts, versions, t, sample_size), traffic)
    judged = [d for d in drift.versions if d.inputs is not None and d.predictions is not None]
    skipped = SkippedRows(
        labels_out_of_range=out_of_range[0],
        predictions_out_of_range=out_of_range[1],
        out_of_range_examples=out_of_range[2],
        feedback_labels_invalid=invalid_feedback,
        inputs=_sum_counts(d.inputs.skipped for d in judged if d.inputs is not None),
        predictions_for_drift=sum(
            d.predictions.skipped
            for d in drift.versions
            if isinstance(d.predictions, PredictionDrift)
        ),
    )
    regression, valued = None, 0
    served_regressors = counts.filter(by_regressor)
    if served_regressors.height:
        regression, valued, unmatched_values = run_query(
            lambda: _regression(traffic, feedback, model, served_regressors, versions, bucket),
            traffic,
            feedback,
        )
        counts = counts.filter(~by_regressor)
        unmatched = pl.concat([unmatched, unmatched_values]).unique()
    return Evaluation(
        model=model,
        since=window.since,
        until=window.until,
        requests=requests,
        answered=answered,
        labelled=labelled.height + valued,
        feedback=FeedbackMatch(
            unmatched.height, unmatched["request_id"].sort().head(EXAMPLES).to_list()
        ),
        accuracy=_accuracy_by_group(counts, labelled),
        versions=[
            _version_metrics(v, labelled.filter(pl.col("version") == v), versions.get(v))
            for v in sorted(labelled["version"].unique().drop_nulls().to_list())
        ],
        bucket=bucket.every,
        accuracy_over_time=_over_time(labelled, bucket),
        latency=stats["by_version_route"],
        latency_over_time=stats["over_time"],
        drift=drift,
        skipped_rows=skipped,
        files=len(traffic.files),
        skipped_files={**traffic.skipped, **feedback.skipped},
        files_without_checksums=len(traffic.unverified) + len(feedback.unverified),
        regression=regression,
    )


def _regression(
    traffic: Scan,
    feedback: Scan,
    model: str,
    counts: pl.DataFrame,
    versions: Mapping[int, VersionInfo],
    bucket: Bucket,
) -> tuple[Regression, int, pl.DataFrame]:
    """The regression versions of `counts` on their true values: (their errors, how many
    requests had a value, the ids of values matching no logged request)."""
    served = sorted(counts["version"].drop_nulls().unique().to_list())
    valued, unmatched, invalid = join_values(traffic, feedback, model, served)
    per_version = []
    for v in served:
        predictions = versions[v].reference.get("predictions") or {}
        rmse = predictions.get("rmse")
        reference_rmse = float(rmse) if isinstance(rmse, int | float) else None
        per_version.append(version_errors(v, valued.filter(pl.col("version") == v), reference_rmse))
    result = Regression(
        errors=errors_by_group(counts, valued),
        versions=per_version,
        error_over_time=error_over_time(valued, bucket),
        feedback_values_invalid=invalid,
    )
    return result, valued.height, unmatched


def _sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for key, n in one.items():
            total[key] = total.get(key, 0) + int(n)
    return total


def _join(
    traffic: Scan, feedback: Scan, model: str, known: set[int]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, int]:
    """(counts per version and route, labelled answered requests, unmatched label ids, labels
    that are no class index at all: negative, or beyond any model's classes).

    The width of each answer (its classes) is read only when a version served is not in
    `known` (versions whose classes the registry knows): decoding that list column costs
    about 10% of the evaluation."""
    base = traffic.frame
    # Labels are the small side (one per labelled request, not per request): hold them, and
    # stream the traffic past them. A hash join would build a table over the traffic
    # instead (about 1 GB at 10M requests); an `is_in` filter is pushed into the scan.
    labels = latest_labels(feedback.frame, model).select("request_id", "label")
    every_label = labels.collect(engine="streaming")
    labels_df = every_label.filter(label_in_range())
    ids = labels_df["request_id"].implode()
    counts = base.group_by("version", "route").agg(
        pl.len().alias("requests"),
        (pl.col("status") == STATUS_OK).sum().alias("answered"),
        pl.col("prediction").is_not_null().sum().alias("predicted"),
        # The writer logs input_shape exactly when it logs input values, and it is far
        # cheaper to read (files of older writers may overcount: it only sizes the sample).
        pl.col("input_shape").is_not_null().sum().alias("with_input"),
    )
    # One query at a time: collect_all would share the scan by caching it, all of it.
    counts_df = counts.collect(engine="streaming")
    unknown = set(counts_df["version"].to_list()) - known
    width = output_width() if unknown else pl.lit(None, pl.Int64)
    hits = base.filter(pl.col("request_id").is_in(ids)).select(
        "request_id", "timestamp", "version", "route", "prediction", "confidence",
        width.alias("outputs"),
    )  # fmt: skip
    hits_df = hits.collect(engine="streaming")
    # A prediction exists only for answered one-sample requests.
    labelled = hits_df.filter(pl.col("prediction").is_not_null()).join(
        labels_df, on="request_id", how="inner"
    )
    unmatched = labels_df.select("request_id").join(
        hits_df.select("request_id"), on="request_id", how="anti"
    )
    return counts_df, labelled, unmatched, every_label.height - labels_df.height


def _checked(
    labelled: pl.DataFrame, versions: Mapping[int, VersionInfo]
) -> tuple[pl.DataFrame, tuple[int, int, list[OutOfRange]]]:
    """The labelled rows whose label and prediction are classes of the version that answered
    (as the registry knows them, else as wide as its logged output), with a `classes`
    column; and what was left out (bad labels, bad predictions, the first few of them)."""
    known = pl.DataFrame(
        {
            "version": [v for v, info in versions.items() if info.classes],
            "known_classes": [info.classes for info in versions.values() if info.classes],
        },
        schema={"version": pl.Int64, "known_classes": pl.Int64},
    )
    rows = labelled.join(known, on="version", how="left").with_columns(
        pl.coalesce("known_classes", "outputs").alias("classes")
    )
    rows = rows.with_columns(
        label_in_range(pl.col("classes")).alias("label_ok"),
        index_below("prediction", pl.col("classes")).alias("prediction_ok"),
    )
    bad_labels = rows.filter(~pl.col("label_ok"))
    bad_predictions = rows.filter(pl.col("label_ok") & ~pl.col("prediction_ok"))
    kept = rows.filter(pl.col("label_ok") & pl.col("prediction_ok"))
    examples = [
        OutOfRange(**{k: r[k] for k in ("request_id", "version", "label", "prediction", "classes")})
        for r in pl.concat([bad_labels, bad_predictions])
        .sort("request_id")
        .head(EXAMPLES)
        .iter_rows(named=True)
    ]
    kept = kept.drop("known_classes", "outputs", "label_ok", "prediction_ok")
    return kept, (bad_labels.height, bad_predictions.height, examples)


def _accuracy_by_group(counts: pl.DataFrame, labelled: pl.DataFrame) -> list[GroupAccuracy]:
    correct = (pl.col("prediction") == pl.col("label")).sum().alias("correct")
    return [
        GroupAccuracy(
            version=r["version"],
            route=r["route"],
            requests=r["requests"],
            answered=r["answered"],
            labelled=n,
            correct=r["correct"] or 0,
            accuracy=(r["correct"] / n) if n else None,
            label_coverage=coverage(n, r["answered"]),
        )
        for r, n in scored_groups(counts, labelled, correct)
    ]


def _version_metrics(version: int, rows: pl.DataFrame, info: VersionInfo | None) -> VersionMetrics:
    """Accuracy, per-class accuracy, confusion and calibration of `rows` (checked: every
    label and prediction is below its row's `classes`)."""
    pred = rows["prediction"].to_numpy().astype(np.int64)
    label = rows["label"].to_numpy().astype(np.int64)
    conf = rows["confidence"].to_numpy().astype(np.float64)
    given = list(info.class_names) if info else []
    known = info.classes if info else None
    k = known or int(rows["classes"].max() or 0)  # type: ignore[arg-type]
    correct = pred == label
    calibration = expected_calibration_error(conf, correct)
    names: list[str]
    if k <= MAX_DENSE_CLASSES:
        matrix = np.bincount(label * k + pred, minlength=k * k).reshape(k, k)
        listed = np.arange(k)
        support, hits = matrix.sum(axis=1), np.diagonal(matrix)
        names = [given[i] if i < len(given) else str(i) for i in range(k)]
        confusion = Confusion(classes=names, matrix=matrix.tolist())
    else:
        # Too many classes to list them all: those that occur (bounded by the rows, whatever
        # the model's width), and the confusion matrix's non-zero cells.
        pairs, cell_counts = np.unique(np.stack([label, pred]), axis=1, return_counts=True)
        listed = np.unique(pairs)
        position = np.searchsorted(listed, pairs[0])
        support = np.zeros(len(listed), dtype=np.int64)
        hits = np.zeros(len(listed), dtype=np.int64)
        np.add.at(support, position, cell_counts)
        same = pairs[0] == pairs[1]
        np.add.at(hits, position[same], cell_counts[same])
        names = [given[i] if i < len(given) else str(i) for i in listed.tolist()]
        confusion = Confusion(
            classes=None,
            matrix=None,
            cells=[
                [int(a), int(b), int(n)] for (a, b), n in zip(pairs.T, cell_counts, strict=True)
            ],
            note=f"{k} classes: only the non-zero cells [truth, prediction, count]",
        )
    return VersionMetrics(
        version=version,
        labelled=len(rows),
        accuracy=float(correct.mean()) if len(rows) else None,
        classes=k,
        per_class=[
            ClassAccuracy(int(c), name, int(n), float(h / n) if n else None)
            for c, name, n, h in zip(listed.tolist(), names, support, hits, strict=True)
        ],
        confusion=confusion,
        calibration=calibration,
    )


def _over_time(labelled: pl.DataFrame, bucket: Bucket) -> list[AccuracyPoint]:
    series = (
        labelled.group_by(pl.col("timestamp").dt.truncate(bucket.every).alias("start"), "version")
        .agg(
            pl.len().alias("labelled"),
            (pl.col("prediction") == pl.col("label")).mean().alias("accuracy"),
        )
        .sort("start", "version")
    )
    return [AccuracyPoint(**row) for row in series.iter_rows(named=True)]
