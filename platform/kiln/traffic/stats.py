"""Traffic statistics: requests, errors, throughput over time, latency percentiles per
version and route (`kiln traffic stats`).

Two streaming scans whatever the size of the log, each reduced to a small histogram before
anything is collected: latencies are counted in logarithmic buckets 1% wide (as HDR
histograms and DDSketch do), and percentiles are read off the cumulative counts. A
percentile is therefore exact to within 0.5% of its value, and memory does not grow with the
number of requests (an exact quantile would hold every latency of a group: gigabytes at tens
of millions of requests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from kiln.traffic.readers import Scan, Window, run_query, scan_traffic
from kiln.traffic.schema import STATUS_OK
from kiln.traffic.store import LogRoot

_BUCKETS = (
    ("1s", 1), ("5s", 5), ("10s", 10), ("30s", 30), ("1m", 60), ("5m", 300), ("10m", 600),
    ("15m", 900), ("30m", 1800), ("1h", 3600), ("2h", 7200), ("3h", 10800), ("6h", 21600),
    ("12h", 43200), ("1d", 86400), ("7d", 604800),
)  # fmt: skip
GROWTH = 1.01
"""Each latency bucket is 1% wider than the one below it."""
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
UNKNOWN_STATUS = "unknown"

_answered = (pl.col("status") == STATUS_OK).fill_null(False)
"""A request with no status (a row of a foreign writer) counts as an error: not answered."""


@dataclass(frozen=True)
class Bucket:
    """The time step of over-time series: a Polars duration and its length in seconds."""

    every: str
    seconds: int


def bucket_for(window: Window, points: int = 24) -> Bucket:
    """The smallest round step that cuts `window` into at most `points` buckets."""
    for every, seconds in _BUCKETS:
        if window.seconds / seconds <= points:
            return Bucket(every, seconds)
    return Bucket(*_BUCKETS[-1])


def log_bucket(column: str) -> pl.Expr:
    """The logarithmic bucket of a non-negative microsecond column (0 and 1 share bucket 0)."""
    value = pl.col(column).clip(lower_bound=1).cast(pl.Float64)
    return (value.log() / math.log(GROWTH)).floor().cast(pl.Int32)


def percentiles(
    buckets: np.ndarray[Any, Any], counts: np.ndarray[Any, Any], quantiles: tuple[float, ...]
) -> list[float | None]:
    """Percentiles (nearest rank) from a histogram of `log_bucket` values, each the geometric
    middle of its bucket; None for an empty histogram."""
    total = counts.sum()
    if not total:
        return [None] * len(quantiles)
    order = np.argsort(buckets)
    cumulative = np.cumsum(counts[order])
    result: list[float | None] = []
    for q in quantiles:
        rank = max(1, math.ceil(q * total))
        b = buckets[order][np.searchsorted(cumulative, rank)]
        result.append(float(GROWTH ** (b + 0.5)) if b > 0 else float(GROWTH**b))
    return result


def traffic_stats(home: LogRoot, model: str, window: Window, *, points: int = 24) -> dict[str, Any]:
    """Requests, errors, throughput and latency of `model` inside `window` (JSON-ready), from
    `home` (a KILN_HOME or a `LogStore`).

    Latency percentiles are over answered requests (failures are often instant and would
    flatter them); queue percentiles likewise. Throughput per group is requests over the span
    from its first to its last request.
    """
    scan = scan_traffic(home, model, window)
    bucket = bucket_for(window, points)
    cells, queues = run_query(lambda: _histograms(scan, bucket), scan)
    # Rows of files from older or foreign writers may lack a latency or a status: they count
    # as requests, but not towards percentiles (and are reported).
    ok = cells.filter((pl.col("status") == STATUS_OK) & pl.col("latency_b").is_not_null())
    no_latency = int(
        cells.filter((pl.col("status") == STATUS_OK) & pl.col("latency_b").is_null())["n"].sum()
    )
    groups = []
    by_group = (
        cells.group_by("version", "route")
        .agg(
            pl.col("n").sum().alias("requests"),
            pl.col("n").filter(~_answered).sum().alias("errors"),
            pl.when(pl.col("batch_n").sum() > 0)
            .then(pl.col("batch_sum").sum() / pl.col("batch_n").sum())
            .alias("mean_batch_size"),
            pl.col("first").min(),
            pl.col("last").max(),
        )
        .sort("version", "route", nulls_last=True)
    )
    for row in by_group.iter_rows(named=True):
        mine = pl.col("version").eq_missing(row["version"]) & pl.col("route").eq_missing(
            row["route"]
        )
        lat = ok.filter(mine).group_by("latency_b").agg(pl.col("n").sum())
        que = queues.filter(mine)
        p50, p95, p99 = percentiles(
            lat["latency_b"].to_numpy(), lat["n"].to_numpy(), LATENCY_QUANTILES
        )
        q50, q99 = percentiles(que["queue_b"].to_numpy(), que["n"].to_numpy(), (0.5, 0.99))
        span = (row["last"] - row["first"]).total_seconds() if row["requests"] > 1 else 0.0
        groups.append(
            {
                "version": row["version"],
                "route": row["route"],
                "requests": row["requests"],
                "errors": row["errors"],
                "error_rate": row["errors"] / row["requests"],
                "requests_per_s": row["requests"] / span if span > 0 else None,
                "latency_p50_us": p50,
                "latency_p95_us": p95,
                "latency_p99_us": p99,
                "queue_p50_us": q50,
                "queue_p99_us": q99,
                "mean_batch_size": row["mean_batch_size"],
                "first": row["first"],
                "last": row["last"],
            }
        )
    series = []
    over_time = (
        cells.group_by("start", "version")
        .agg(
            pl.col("n").sum().alias("requests"),
            pl.col("n").filter(~_answered).sum().alias("errors"),
        )
        .sort("start", "version", nulls_last=True)
    )
    for row in over_time.iter_rows(named=True):
        mine = (pl.col("start") == row["start"]) & pl.col("version").eq_missing(row["version"])
        lat = ok.filter(mine).group_by("latency_b").agg(pl.col("n").sum())
        p50, p95, p99 = percentiles(
            lat["latency_b"].to_numpy(), lat["n"].to_numpy(), LATENCY_QUANTILES
        )
        series.append(
            {
                "start": row["start"],
                "version": row["version"],
                "requests": row["requests"],
                "errors": row["errors"],
                "requests_per_s": row["requests"] / bucket.seconds,
                "latency_p50_us": p50,
                "latency_p95_us": p95,
                "latency_p99_us": p99,
            }
        )
    statuses = (
        cells.group_by(pl.col("status").fill_null(UNKNOWN_STATUS))
        .agg(pl.col("n").sum())
        .sort("status")
    )
    requests = int(cells["n"].sum())
    errors = int(cells.filter(~_answered)["n"].sum())
    return {
        "model": model,
        "since": window.since,
        "until": window.until,
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "by_version_route": groups,
        "statuses": dict(zip(statuses["status"], statuses["n"], strict=True)),
        "bucket": bucket.every,
        "over_time": series,
        "skipped_rows": {"answered_without_latency": no_latency},
        "files": len(scan.files),
        "skipped_files": scan.skipped,
        "skipped_file_count": len(scan.skipped),
        "files_without_checksums": len(scan.unverified),
    }


def _histograms(scan: Scan, bucket: Bucket) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(counts per version, route, time bucket, status and latency bucket; answered requests
    per version, route and queue bucket). Both are small whatever the size of the log."""
    frame = scan.frame
    cells = (
        frame.group_by(
            "version",
            "route",
            pl.col("timestamp").dt.truncate(bucket.every).alias("start"),
            "status",
            log_bucket("latency_us").alias("latency_b"),
        )
        .agg(
            pl.len().alias("n"),
            pl.col("batch_size").sum().alias("batch_sum"),
            pl.col("batch_size").count().alias("batch_n"),
            pl.col("timestamp").min().alias("first"),
            pl.col("timestamp").max().alias("last"),
        )
        .collect(engine="streaming")
    )
    queues = (
        frame.filter((pl.col("status") == STATUS_OK) & pl.col("queue_us").is_not_null())
        .group_by("version", "route", log_bucket("queue_us").alias("queue_b"))
        .agg(pl.len().alias("n"))
        .collect(engine="streaming")
    )
    return cells, queues
