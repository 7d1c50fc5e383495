"""Traffic statistics: requests, errors, throughput over time, latency percentiles per
version and route (`kiln traffic stats`). Every number comes from lazy scans."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from kiln.traffic.readers import Scan, Window, run_query, scan_traffic
from kiln.traffic.schema import STATUS_OK

_BUCKETS = (
    ("1s", 1), ("5s", 5), ("10s", 10), ("30s", 30), ("1m", 60), ("5m", 300), ("10m", 600),
    ("15m", 900), ("30m", 1800), ("1h", 3600), ("2h", 7200), ("3h", 10800), ("6h", 21600),
    ("12h", 43200), ("1d", 86400), ("7d", 604800),
)  # fmt: skip


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


def _percentiles(column: str, prefix: str, quantiles: tuple[float, ...]) -> list[pl.Expr]:
    ok = pl.col("status") == STATUS_OK
    return [
        pl.col(column).filter(ok).quantile(q, "linear").alias(f"{prefix}_p{round(q * 100)}_us")
        for q in quantiles
    ]


def _latency() -> list[pl.Expr]:
    return _percentiles("latency_us", "latency", (0.5, 0.95, 0.99))


def traffic_stats(home: Path, model: str, window: Window, *, points: int = 24) -> dict[str, Any]:
    """Requests, errors, throughput and latency of `model` inside `window` (JSON-ready).

    Latency percentiles are over answered requests (failures are often instant and would
    flatter them); queue percentiles likewise. Throughput per group is requests over the span
    from its first to its last request.
    """
    scan = scan_traffic(home, model, window)
    bucket = bucket_for(window, points)
    by_group, over_time, statuses = run_query(lambda: _queries(scan, bucket), scan)
    requests = int(by_group["requests"].sum()) if by_group.height else 0
    errors = int(by_group["errors"].sum()) if by_group.height else 0
    groups = []
    for row in by_group.iter_rows(named=True):
        span = (row["last"] - row["first"]).total_seconds() if row["requests"] > 1 else 0.0
        groups.append(
            {
                "version": row["version"],
                "route": row["route"],
                "requests": row["requests"],
                "errors": row["errors"],
                "error_rate": row["errors"] / row["requests"],
                "requests_per_s": row["requests"] / span if span > 0 else None,
                "latency_p50_us": row["latency_p50_us"],
                "latency_p95_us": row["latency_p95_us"],
                "latency_p99_us": row["latency_p99_us"],
                "queue_p50_us": row["queue_p50_us"],
                "queue_p99_us": row["queue_p99_us"],
                "mean_batch_size": row["mean_batch_size"],
                "first": row["first"],
                "last": row["last"],
            }
        )
    series = [
        {
            "start": row["start"],
            "version": row["version"],
            "requests": row["requests"],
            "errors": row["errors"],
            "requests_per_s": row["requests"] / bucket.seconds,
            "latency_p50_us": row["latency_p50_us"],
            "latency_p95_us": row["latency_p95_us"],
            "latency_p99_us": row["latency_p99_us"],
        }
        for row in over_time.iter_rows(named=True)
    ]
    return {
        "model": model,
        "since": window.since,
        "until": window.until,
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "by_version_route": groups,
        "statuses": dict(zip(statuses["status"], statuses["requests"], strict=True)),
        "bucket": bucket.every,
        "over_time": series,
        "files": len(scan.files),
        "skipped_files": scan.skipped,
    }


def _queries(scan: Scan, bucket: Bucket) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    frame = scan.frame.select(
        "timestamp", "version", "route", "status", "latency_us", "queue_us", "batch_size"
    )
    errors = (pl.col("status") != STATUS_OK).sum().alias("errors")
    by_group = (
        frame.group_by("version", "route")
        .agg(
            pl.len().alias("requests"),
            errors,
            *_latency(),
            *_percentiles("queue_us", "queue", (0.5, 0.99)),
            pl.col("batch_size").mean().alias("mean_batch_size"),
            pl.col("timestamp").min().alias("first"),
            pl.col("timestamp").max().alias("last"),
        )
        .sort("version", "route", nulls_last=True)
    )
    over_time = (
        frame.group_by(pl.col("timestamp").dt.truncate(bucket.every).alias("start"), "version")
        .agg(pl.len().alias("requests"), errors, *_latency())
        .sort("start", "version", nulls_last=True)
    )
    statuses = frame.group_by("status").agg(pl.len().alias("requests")).sort("status")
    by_group_df, over_time_df, statuses_df = pl.collect_all(
        [by_group, over_time, statuses], engine="streaming"
    )
    return by_group_df, over_time_df, statuses_df
