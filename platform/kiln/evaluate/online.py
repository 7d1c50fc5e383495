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

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kiln.evaluate.drift import (
    DriftThresholds,
    input_drift,
    prediction_drift,
    samples_from_inputs,
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
from kiln.traffic.stats import Bucket, bucket_for

ECE_BINS = 15
SAMPLE_SIZE = 50_000


@dataclass(frozen=True)
class VersionInfo:
    """What evaluation needs to know about a served version (from the registry)."""

    version: int
    class_names: list[str] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)


def expected_calibration_error(
    confidence: np.ndarray[Any, Any], correct: np.ndarray[Any, Any], bins: int = ECE_BINS
) -> tuple[float, list[dict[str, Any]]]:
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
        rows.append(
            {
                "low": float(lo),
                "high": float(hi),
                "count": count,
                "accuracy": acc,
                "confidence": conf,
            }
        )
    return float(ece), rows


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
) -> dict[str, Any]:
    """The online evaluation of `model` over `window`, as a JSON-ready dict.

    `versions` gives class names and reference profiles; versions missing from it are
    evaluated without drift (noted in the result). Raises `TrafficNotFound` when the model
    never logged traffic here.
    """
    t = thresholds or DriftThresholds()
    traffic = scan_traffic(home, model, window)
    feedback = scan_feedback(home, window)
    bucket = bucket_for(window, points)
    counts, labelled, unmatched = run_query(
        lambda: _join(traffic, feedback, model), traffic, feedback
    )
    stats = traffic_stats(home, model, window, points=points)
    requests = int(counts["requests"].sum()) if counts.height else 0
    answered = int(counts["answered"].sum()) if counts.height else 0
    drift = run_query(lambda: _drift(traffic, counts, versions, t, sample_size), traffic)
    return {
        "model": model,
        "since": window.since,
        "until": window.until,
        "requests": requests,
        "answered": answered,
        "labelled": labelled.height,
        "label_coverage": labelled.height / answered if answered else None,
        "feedback": {
            "unmatched": unmatched.height,
            "unmatched_examples": unmatched["request_id"].sort().head(5).to_list(),
        },
        "accuracy": _accuracy_by_group(counts, labelled),
        "versions": [
            _version_metrics(v, labelled.filter(pl.col("version") == v), versions.get(v))
            for v in sorted(labelled["version"].unique().drop_nulls().to_list())
        ],
        "bucket": bucket.every,
        "accuracy_over_time": _over_time(labelled, bucket),
        "latency": stats["by_version_route"],
        "latency_over_time": stats["over_time"],
        "drift": drift,
        "drift_detected": any(v["drift"] for v in drift["versions"]),
        "files": len(traffic.files),
        "skipped_files": {**traffic.skipped, **feedback.skipped},
    }


def _join(
    traffic: Scan, feedback: Scan, model: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(counts per version and route, labelled answered requests, unmatched label ids)."""
    base = traffic.frame
    # Labels are the small side (one per labelled request, not per request): hold them, and
    # stream the traffic past them. A hash join would build a table over the traffic
    # instead (about 1 GB at 10M requests); an `is_in` filter is pushed into the scan.
    labels = latest_labels(feedback.frame, model).select("request_id", "label")
    labels_df = labels.collect(engine="streaming")
    ids = labels_df["request_id"].implode()
    counts = base.group_by("version", "route").agg(
        pl.len().alias("requests"),
        (pl.col("status") == STATUS_OK).sum().alias("answered"),
        pl.col("prediction").is_not_null().sum().alias("predicted"),
        # input_shape is null exactly when input is, and far cheaper to read.
        pl.col("input_shape").is_not_null().sum().alias("with_input"),
    )
    hits = base.filter(pl.col("request_id").is_in(ids)).select(
        "request_id", "timestamp", "version", "route", "prediction", "confidence"
    )
    # One query at a time: collect_all would share the scan by caching it, all of it.
    counts_df, hits_df = counts.collect(engine="streaming"), hits.collect(engine="streaming")
    # A prediction exists only for answered one-sample requests.
    labelled = hits_df.filter(pl.col("prediction").is_not_null()).join(
        labels_df, on="request_id", how="inner"
    )
    unmatched = labels_df.select("request_id").join(
        hits_df.select("request_id"), on="request_id", how="anti"
    )
    return counts_df, labelled, unmatched


def _accuracy_by_group(counts: pl.DataFrame, labelled: pl.DataFrame) -> list[dict[str, Any]]:
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
            {
                "version": r["version"],
                "route": r["route"],
                "requests": r["requests"],
                "answered": r["answered"],
                "labelled": n,
                "correct": r["correct"] or 0,
                "accuracy": (r["correct"] / n) if n else None,
                "label_coverage": n / r["answered"] if r["answered"] else None,
            }
        )
    return out


def _version_metrics(version: int, rows: pl.DataFrame, info: VersionInfo | None) -> dict[str, Any]:
    pred = rows["prediction"].to_numpy()
    label = rows["label"].to_numpy()
    conf = rows["confidence"].to_numpy().astype(np.float64)
    names = list(info.class_names) if info else []
    k = max(len(names), int(pred.max(initial=-1)) + 1, int(label.max(initial=-1)) + 1)
    names += [str(i) for i in range(len(names), k)]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (label, pred), 1)
    support = confusion.sum(axis=1)
    correct = pred == label
    ece, bins = expected_calibration_error(conf, correct)
    return {
        "version": version,
        "labelled": len(rows),
        "accuracy": float(correct.mean()) if len(rows) else None,
        "per_class": [
            {
                "class": i,
                "name": names[i],
                "labelled": int(support[i]),
                "accuracy": float(confusion[i, i] / support[i]) if support[i] else None,
            }
            for i in range(k)
        ],
        "confusion": {"classes": names, "matrix": confusion.tolist()},
        "calibration": {"ece": ece, "bins": bins},
    }


def _over_time(labelled: pl.DataFrame, bucket: Bucket) -> list[dict[str, Any]]:
    series = (
        labelled.group_by(pl.col("timestamp").dt.truncate(bucket.every).alias("start"), "version")
        .agg(
            pl.len().alias("labelled"),
            (pl.col("prediction") == pl.col("label")).mean().alias("accuracy"),
        )
        .sort("start", "version")
    )
    return list(series.iter_rows(named=True))


def _drift(
    traffic: Scan,
    counts: pl.DataFrame,
    versions: Mapping[int, VersionInfo],
    t: DriftThresholds,
    sample_size: int,
) -> dict[str, Any]:
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
    inputs = _every(
        traffic.build(traffic.files[::step]).filter(pl.col("input_shape").is_not_null()),
        with_input // step,
        sample_size,
    )
    class_df = class_counts.collect(engine="streaming")
    conf_df = confidences.select("version", "confidence").collect(engine="streaming")
    input_df = inputs.select("version", "input").collect(engine="streaming")
    results = []
    for v in served:
        info = versions.get(v)
        reference = info.reference if info else {}
        entry: dict[str, Any] = {"version": v, "drift": False}
        if not reference.get("inputs") or not reference.get("predictions"):
            entry["note"] = (
                f"version {v} has no reference profile (it was not trained by this Kiln, or "
                "is not in the registry): drift not measured"
            )
            results.append(entry)
            continue
        logged = input_df.filter(pl.col("version") == v)["input"]
        x, misfit = samples_from_inputs(
            logged.explode().to_numpy(),
            logged.list.len().to_numpy(),
            reference["inputs"]["input_shape"],
        )
        entry["inputs"] = input_drift(x, reference["inputs"], t)
        entry["inputs"]["incompatible_inputs"] = misfit
        mine = class_df.filter(pl.col("version") == v)
        pairs = dict(mine.select("prediction", "n").iter_rows())
        per_class = [pairs.get(c, 0) for c in range(max(pairs, default=-1) + 1)]
        entry["predictions"] = prediction_drift(
            per_class,
            conf_df.filter(pl.col("version") == v)["confidence"].to_numpy().astype(np.float64),
            reference["predictions"],
            info.class_names if info else [],
            t,
        )
        entry["drift"] = bool(
            entry["inputs"]["drifted"]
            or entry["predictions"].get("drift")
            or entry["predictions"].get("confidence", {}).get("drift")
        )
        results.append(entry)
    return {"thresholds": t.as_dict(), "sample_size": sample_size, "versions": results}
