"""Lazy scans over the traffic and feedback partitions.

A scan lists the part files of the wanted model and dates only (the partition pushdown: other
directories are never opened) in a `LogStore` (KILN_HOME, or an S3 bucket), checks each
file's schema from its footer and its bytes against the CRC-32 its name carries
(`checksums`), and skips, with a warning that names it, any file that is damaged or is not a
Kiln file of the right kind. The result is a Polars `LazyFrame`: queries
over it stream, so logs far larger than memory work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import polars as pl

from kiln.errors import InvalidArgument, TrafficNotFound, quote
from kiln.traffic.layout import model_dir
from kiln.traffic.schema import (
    FEEDBACK_REQUIRED,
    FEEDBACK_SCHEMA,
    TRAFFIC_REQUIRED,
    TRAFFIC_SCHEMA,
    schema_problem,
)
from kiln.traffic.store import LocalLogStore, LogRoot, LogStore, PartFile, as_store

log = logging.getLogger("kiln.traffic")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`24h`, `30m`, `7d`, `90s`, `2w` before `now`, or an ISO date/time (UTC unless given)."""
    now = now or datetime.now(UTC)
    value = text.strip()
    unit = value[-1:].lower()
    if unit in _UNITS and value[:-1].replace(".", "", 1).isdigit():
        try:
            return now - timedelta(seconds=float(value[:-1]) * _UNITS[unit])
        except (OverflowError, ValueError):  # beyond what a datetime can count back to
            raise InvalidArgument(
                f"--since {quote(text)} reaches back before the year 1; use a shorter "
                "duration, e.g. 24h, 30m, 7d"
            ) from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(
            f"--since {quote(text)} is neither a duration nor a date; use e.g. 24h, 30m, 7d or "
            "2026-11-24T08:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """A half-open time range [since, until) in UTC."""

    since: datetime
    until: datetime

    @classmethod
    def last(cls, since: str, now: datetime | None = None) -> Window:
        now = now or datetime.now(UTC)
        return cls(parse_since(since, now), now)

    @property
    def first_day(self) -> date:
        return self.since.astimezone(UTC).date()

    @property
    def last_day(self) -> date:
        return self.until.astimezone(UTC).date()

    @property
    def seconds(self) -> float:
        return max((self.until - self.since).total_seconds(), 1e-9)


@dataclass
class Scan:
    """The readable part files of a query, the ones skipped (path -> why), and how to scan them.

    `frame` is rebuilt from `files` on each access, so after `drop_damaged` removed a file,
    the next query no longer reads it.
    """

    files: list[PartFile]
    """Paths, or ``s3://`` URLs for a bucket."""
    skipped: dict[str, str]
    build: Callable[[list[PartFile]], pl.LazyFrame]
    unverified: list[str] = field(default_factory=list)
    """Readable files whose names carry no CRC-32 (written before checksums, or by another
    writer): their data could not be checked."""
    store: LogStore = field(default_factory=lambda: LocalLogStore(Path()))
    """Where `files` are (what `drop_damaged` reads them from)."""

    @property
    def frame(self) -> pl.LazyFrame:
        return self.build(self.files)


def traffic_models(home: LogRoot) -> list[str]:
    """Models that have logged traffic in `home` (a KILN_HOME or a `LogStore`)."""
    return as_store(home).models()


def scan_traffic(home: LogRoot, model: str, window: Window | None = None) -> Scan:
    """Traffic rows of `model` (inside `window` when given) in `home` (a KILN_HOME or a
    `LogStore`). Raises `TrafficNotFound` when the model has never logged traffic there."""
    store = as_store(home)
    relative = model_dir(Path("traffic"), model).as_posix()
    if not store.has_model(model, relative):
        known = store.models()
        raise TrafficNotFound(
            f"no traffic logged for model '{model}' under {store.where('traffic')}; "
            + (
                f"models with traffic: {', '.join(known)}"
                if known
                else "serve it with `kiln serve` (traffic logging is on by default)"
            )
        )
    good, skipped, unverified = _readable(
        store, store.parts(relative, *_days(window)), TRAFFIC_SCHEMA, TRAFFIC_REQUIRED
    )

    def build(files: list[PartFile]) -> pl.LazyFrame:
        frame = _lazy(store, files, TRAFFIC_SCHEMA).filter(pl.col("model") == model)
        return frame if window is None else frame.filter(_between("timestamp", window))

    return Scan(good, skipped, build, unverified, store)


def scan_feedback(home: LogRoot, window: Window | None = None) -> Scan:
    """Feedback rows received inside `window` (all when None) in `home` (a KILN_HOME or a
    `LogStore`); empty when none exist."""
    store = as_store(home)
    files = store.parts("feedback", *_days(window))
    good, skipped, unverified = _readable(store, files, FEEDBACK_SCHEMA, FEEDBACK_REQUIRED)

    def build(files: list[PartFile]) -> pl.LazyFrame:
        frame = _lazy(store, files, FEEDBACK_SCHEMA)
        return frame if window is None else frame.filter(_between("received_at", window))

    return Scan(good, skipped, build, unverified, store)


def latest_labels(feedback: pl.LazyFrame, model: str | None = None) -> pl.LazyFrame:
    """One label per request id: the last one received. Feedback that names another model is
    left out; feedback that names none is kept; rows carrying a value, not a label, too."""
    return _latest(feedback, model, "label")


def latest_values(feedback: pl.LazyFrame, model: str | None = None) -> pl.LazyFrame:
    """One true value per request id (regressors' feedback): the last one received, by the
    same rules as `latest_labels`."""
    return _latest(feedback, model, "value")


def _latest(feedback: pl.LazyFrame, model: str | None, column: str) -> pl.LazyFrame:
    if model is not None:
        feedback = feedback.filter(pl.col("model").is_null() | (pl.col("model") == model))
    if column != "label":
        feedback = feedback.filter(pl.col(column).is_not_null())
    else:
        # Files written before numeric feedback hold labels only, all set; a value row's
        # label is null and must not hide an earlier label of the same request.
        feedback = feedback.filter(pl.col("value").is_null() | pl.col("label").is_not_null())
    return feedback.group_by("request_id").agg(
        pl.col(column).sort_by("received_at").last(),
        pl.col("received_at").max(),
    )


T = TypeVar("T")


def run_query(query: Callable[[], T], *scans: Scan) -> T:
    """Run `query`; if it fails on a file that is damaged past its footer (a footer check
    cannot see a bad data page), find such files by reading each, skip them with a warning,
    and run it once more."""
    try:
        return query()
    except (pl.exceptions.ComputeError, OSError):
        if not drop_damaged(*scans):
            raise
        return query()


def drop_damaged(*scans: Scan) -> bool:
    """Read every file of `scans` in full; remove unreadable ones (warning, `skipped`)."""
    dropped = False
    for scan in scans:
        keep = []
        for path in scan.files:
            try:
                scan.store.read(path)
            except (pl.exceptions.PolarsError, OSError) as exc:
                why = scan.store.scrub(f"damaged Parquet data ({type(exc).__name__}: {exc})")
                scan.skipped[str(path)] = why
                log.warning("skipping %s: %s", path, why)
                dropped = True
            else:
                keep.append(path)
        scan.files = keep
    return dropped


def _days(window: Window | None) -> tuple[date | None, date | None]:
    return (None, None) if window is None else (window.first_day, window.last_day)


def _between(column: str, window: Window) -> pl.Expr:
    return (pl.col(column) >= window.since) & (pl.col(column) < window.until)


def _readable(
    store: LogStore, files: Sequence[PartFile], schema: pl.Schema, required: tuple[str, ...]
) -> tuple[list[PartFile], dict[str, str], list[str]]:
    """Split `files` into those whose footer has a compatible schema and whose bytes match the
    CRC-32 in their name, and the rest (-> why); also list the good ones that carry no CRC.

    Nothing is decoded, only summed: about 0.4 s per GB of log, each file once per process
    (files never change once written); in a bucket, S3's stored checksum is compared instead
    (`kiln.traffic.s3_store`)."""
    candidates: list[PartFile] = []
    skipped: dict[str, str] = {}
    for path, found in zip(files, store.footers(files), strict=True):
        if isinstance(found, str):
            why = f"not a readable Parquet file ({found})"
        else:
            problem = schema_problem(found, schema, required)
            if problem is None:
                candidates.append(path)
                continue
            why = problem
        skipped[str(path)] = why
    good: list[PartFile] = []
    unverified: list[str] = []
    for path, check in zip(candidates, store.checks(candidates), strict=True):
        if check.problem is None:
            good.append(path)
            if not check.checked:
                unverified.append(str(path))
        else:
            skipped[str(path)] = f"damaged Parquet data ({check.problem})"
    for path in files:
        if str(path) in skipped:
            log.warning("skipping %s: %s", path, skipped[str(path)])
    return good, skipped, unverified


def _lazy(store: LogStore, files: list[PartFile], schema: pl.Schema) -> pl.LazyFrame:
    if not files:
        return pl.LazyFrame(schema=schema)
    # Partitions were pruned by directory name already; the window's timestamp predicate is
    # pushed into the scan and skips row groups by their statistics.
    return store.scan(
        files,
        schema=dict(schema),
        hive_partitioning=False,
        missing_columns="insert",
        extra_columns="ignore",
    )
