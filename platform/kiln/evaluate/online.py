"""Online evaluation: served traffic joined with ground truth, and drift against the reference.

`evaluate_traffic` reads the model's traffic in a window and the feedback received in it (lazy
scans; the heavy part, the join on request id, streams), then computes on the labelled part:
accuracy per version and route, per-class accuracy, confusion matrix, calibration (expected
calibration error, 15 equal-width confidence bins, as `kiln train` reports it), label
coverage, accuracy over time; and drift of inputs and predictions per version.

Input drift looks at a deterministic sample of the logged inputs (at most `sample_size`
requests, evenly spread over the window) so that its cost does not grow with the log;
prediction shares count every answered request.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kiln.evaluate.drift import (
    DriftThresholds,
    PredictionDrift,
    input_drift,
    prediction_drift,
    samples_from_inputs,
)
from kiln.evaluate.results import (
    AccuracyPoint,
    Calibration,
    CalibrationBin,
    ClassAccuracy,
    Confusion,
    DriftReport,
    Evaluation,
    FeedbackMatch,
    GroupAccuracy,
    OutOfRange,
    SkippedRows,
    VersionDrift,
    VersionMetrics,
)
from kiln.traffic import (
    STATUS_OK,
    Scan,
    Window,
    latest_labels,
    run_query,
    scan_feedback,
    scan_traffic,
    traffic_stats,
)
from kiln.traffic.labels import CLASSIFICATION, REGRESSION
from kiln.traffic.stats import Bucket, bucket_for
from kiln.traffic.validity import index_below, input_problem, label_in_range, output_width

ECE_BINS = 15
SAMPLE_SIZE = 50_000
MAX_DENSE_CLASSES = 1024
"""Up to this many classes the confusion matrix is reported whole (classes x classes);
beyond, only its non-zero cells: a 100,000-class matrix would take 80 GB."""
EXAMPLES = 5


@dataclass(frozen=True)
class VersionInfo:
    """What evaluation needs to know about a served version (from the registry)."""

    version: int
    class_names: list[str] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    """The version's class count when known otherwise than by its names (its output width)."""
    task: str = CLASSIFICATION
    """"classification" or "regression" (`config["task"]`; absent means classification)."""

    @property
    def regression(self) -> bool:
        return self.task == REGRESSION

    @property
    def classes(self) -> int | None:
        """How many classes the version has, when the registry says: labels and predictions
        are checked against it, and nothing is sized by a value beyond it."""
        return self.num_classes or len(self.class_names) or None


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


def _every(frame: pl.LazyFrame, rows: int, limit: int) -> pl.LazyFrame:
    """About `limit` of `rows` rows, evenly spread: every k-th in file order (part files are
    read in name order, i.e. time order), so the same log gives the same sample."""
    return frame if rows <= limit else frame.gather_every(-(-rows // limit))


def evaluate_traffic(
    home: Path,
    model: str,
    window: Window,
    versions: Mapping[int, VersionInfo],
    *,
    thresholds: DriftThresholds | None = None,
    sample_size: int = SAMPLE_SIZE,
    points: int = 24,
) -> Evaluation:
    """The online evaluation of `model` over `window` (`Evaluation.to_dict()` for JSON).

    `versions` gives class names and reference profiles; versions missing from it are
    evaluated without drift (noted in the result), their classes taken from the width of
    their logged outputs. Rows that cannot be used (a label outside the version's classes, a
    logged input whose values do not match its shape, ...) are left out and counted under
    `skipped_rows`; damaged or foreign files under `skipped_files`. Raises `TrafficNotFound`
    when the model never logged traffic here.
    """
    t = thresholds or DriftThresholds()
    traffic = scan_traffic(home, model, window)
    feedback = scan_feedback(home, window)
    bucket = bucket_for(window, points)
    known = {v for v, info in versions.items() if info.classes}
    counts, hits, unmatched, invalid_feedback = run_query(
        lambda: _join(traffic, feedback, model, known), traffic, feedback
    )
    labelled, out_of_range = _checked(hits, versions)
    stats = traffic_stats(home, model, window, points=points)
    requests = int(counts["requests"].sum()) if counts.height else 0
    answered = int(counts["answered"].sum()) if counts.height else 0
    drift = run_query(lambda: _drift(traffic, counts, versions, t, sample_size), traffic)
    judged = [d for d in drift.versions if d.inputs is not None and d.predictions is not None]
    skipped = SkippedRows(
        labels_out_of_range=out_of_range[0],
        predictions_out_of_range=out_of_range[1],
        out_of_range_examples=out_of_range[2],
        feedback_labels_invalid=invalid_feedback,
        inputs=_sum_counts(d.inputs.skipped for d in judged if d.inputs is not None),
        predictions_for_drift=sum(d.predictions.skipped for d in judged if d.predictions),
    )
    return Evaluation(
        model=model,
        since=window.since,
        until=window.until,
        requests=requests,
        answered=answered,
        labelled=labelled.height,
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
    )


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
    scored = labelled.group_by("version", "route").agg(
        pl.len().alias("labelled"),
        (pl.col("prediction") == pl.col("label")).sum().alias("correct"),
    )
    rows = counts.join(scored, on=["version", "route"], how="left").sort(
        "version", "route", nulls_last=True
    )
    out = []
    for r in rows.iter_rows(named=True):
        n = r["labelled"] or 0
        out.append(
            GroupAccuracy(
                version=r["version"],
                route=r["route"],
                requests=r["requests"],
                answered=r["answered"],
                labelled=n,
                correct=r["correct"] or 0,
                accuracy=(r["correct"] / n) if n else None,
                label_coverage=n / r["answered"] if r["answered"] else None,
            )
        )
    return out


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


def _drift(
    traffic: Scan,
    counts: pl.DataFrame,
    versions: Mapping[int, VersionInfo],
    t: DriftThresholds,
    sample_size: int,
) -> DriftReport:
    served = sorted(counts["version"].drop_nulls().unique().to_list())
    base = traffic.frame
    predicted = base.filter(pl.col("prediction").is_not_null())  # answered, one sample
    class_counts = predicted.group_by("version", "prediction").agg(pl.len().alias("n"))
    confidences = _every(predicted, int(counts["predicted"].sum()), sample_size)
    # Inputs of every request that logged one, answered or not: drift is about what arrives.
    # Beyond the sample size, read every k-th part file only: decoding the input column is
    # the expensive part, and files are spread evenly over time.
    with_input = int(counts["with_input"].sum())
    step = max(1, -(-with_input // sample_size))
    logged = pl.col("input_shape").is_not_null() | pl.col("input").is_not_null()
    inputs = _every(
        traffic.build(traffic.files[::step]).filter(logged), with_input // step, sample_size
    )
    class_df = class_counts.collect(engine="streaming")
    conf_df = (
        confidences.select("version", "confidence")
        .filter(pl.col("confidence").is_finite())
        .collect(engine="streaming")
    )
    input_df = inputs.select("version", "input", input_problem().alias("problem")).collect(
        engine="streaming"
    )
    results = []
    for v in served:
        info = versions.get(v)
        reference = info.reference if info else {}
        if not reference.get("inputs") or not reference.get("predictions"):
            note = (
                f"version {v} has no reference profile (it was not trained by this Kiln, or "
                "is not in the registry): drift not measured"
            )
            results.append(VersionDrift(v, drift=False, note=note))
            continue
        mine = input_df.filter(pl.col("version") == v)
        problems = mine.filter(pl.col("problem").is_not_null())["problem"].value_counts()
        usable = mine.filter(pl.col("problem").is_null())["input"]
        x, misfit = samples_from_inputs(
            usable.explode().to_numpy(),
            usable.list.len().to_numpy(),
            reference["inputs"]["input_shape"],
        )
        measured = dataclasses.replace(
            input_drift(x, reference["inputs"], t),
            incompatible_inputs=misfit,
            skipped={**dict(problems.iter_rows()), **({"wrong_width": misfit} if misfit else {})},
        )
        predictions = _prediction_drift(class_df, conf_df, v, info, reference, t)
        drifted = bool(measured.drifted or predictions.drifted)
        results.append(VersionDrift(v, drifted, inputs=measured, predictions=predictions))
    return DriftReport(t, sample_size, results)


def _prediction_drift(
    class_df: pl.DataFrame,
    conf_df: pl.DataFrame,
    version: int,
    info: VersionInfo | None,
    reference: dict[str, Any],
    t: DriftThresholds,
) -> PredictionDrift:
    """Prediction drift of `version`, counting only predictions that are its classes (the
    registry's count, else the reference's): a class index from a damaged row sizes nothing."""
    classes = (info.classes if info else None) or len(reference["predictions"]["class_fractions"])
    mine = class_df.filter(pl.col("version") == version)
    ok = index_below("prediction", pl.lit(classes))
    per_class = np.zeros(classes, dtype=np.int64)
    kept = mine.filter(ok)
    np.add.at(per_class, kept["prediction"].to_numpy(), kept["n"].to_numpy())
    result = prediction_drift(
        per_class.tolist(),
        conf_df.filter(pl.col("version") == version)["confidence"].to_numpy().astype(np.float64),
        reference["predictions"],
        info.class_names if info else [],
        t,
    )
    return dataclasses.replace(result, skipped=int(mine.filter(~ok)["n"].sum()))
