"""Ground truth: labels keyed by request id, stored under ``KILN_HOME/feedback/date=…/``.

Three ways in, one store: `FeedbackWriter.add` for servers (the gRPC kiln.v1 feedback service
and the BentoML HTTP endpoint call it; it never waits on disk), and `import_feedback` for files
(`kiln feedback import`). Labels for request ids that match no logged request are kept (the
request's row may still be in a server's buffer, or in another server's log) and reported as
unmatched.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import polars as pl

from kiln.errors import FeedbackBufferFull, FeedbackRejected, TrafficNotFound, quote
from kiln.traffic.layout import feedback_root, write_part
from kiln.traffic.logger import TrafficSettings
from kiln.traffic.readers import Scan, run_query, scan_traffic, traffic_models
from kiln.traffic.schema import FEEDBACK_SCHEMA
from kiln.traffic.writer import BackgroundWriter, WriterStats

FeedbackRow = tuple[str, int, int, str, str | None]
"""(request_id, label, received_at in ns since the epoch, source, model or None)."""

MAX_LABEL = 2**31 - 1
"""The largest label accepted when the model's classes are not known where it arrives: labels
are class indices, and every reader sizes by the model's own classes, never by a label."""


def label_problem(label: int, num_classes: int | None = None) -> str | None:
    """Why `label` is not a class index of a model with `num_classes` classes; None if it is.

    The one rule for every way labels arrive (gRPC, HTTP, files) and every reader.
    """
    if label < 0:
        return f"label {label} is negative; labels are class indices from 0"
    if num_classes is not None and label >= num_classes:
        return (
            f"label {label} is out of range: the model has {num_classes} classes, "
            f"valid labels are 0-{num_classes - 1}"
        )
    if label > MAX_LABEL:
        return f"label {label} is out of range: labels are class indices 0-{MAX_LABEL}"
    return None


class FeedbackWriter:
    """Buffers labels and writes them in the background, like the traffic logger.

    `add` is what a transport's feedback handler calls, once per label, on the request path.
    """

    def __init__(self, home: Path, settings: TrafficSettings | None = None) -> None:
        settings = settings or TrafficSettings()
        self.root = feedback_root(home)
        self._writer: BackgroundWriter[FeedbackRow] = BackgroundWriter(
            "feedback",
            self._to_parts,
            max_rows=settings.max_buffered_rows,
            flush_rows=settings.flush_rows,
            flush_interval_s=settings.flush_interval_s,
        )

    def add(
        self,
        request_id: str,
        label: int,
        *,
        model: str | None = None,
        source: str = "grpc",
        received_at_ns: int = 0,
        num_classes: int | None = None,
    ) -> None:
        """Record that request `request_id` had true class `label`. Never waits on disk.

        Raises `FeedbackRejected` (INVALID_ARGUMENT) for an empty id or a label outside
        `0 .. num_classes - 1` (outside the int32 range when `num_classes` is None), and
        `FeedbackBufferFull` (RESOURCE_EXHAUSTED) when the buffer is full: once this returns
        the label is kept.
        """
        self.add_all([self.row(request_id, label, model, source, received_at_ns, num_classes)])

    def row(
        self,
        request_id: str,
        label: int,
        model: str | None = None,
        source: str = "grpc",
        received_at_ns: int = 0,
        num_classes: int | None = None,
    ) -> FeedbackRow:
        """One checked row for `add_all`; raises `FeedbackRejected` as `add` does."""
        if not request_id:
            raise FeedbackRejected("feedback needs the request id the server returned")
        problem = label_problem(label, num_classes)
        if problem:
            raise FeedbackRejected(f"feedback for request {quote(request_id)}: {problem}")
        return (request_id, int(label), received_at_ns or time.time_ns(), source, model or None)

    def add_all(self, rows: Sequence[FeedbackRow]) -> None:
        """Buffer every row (made by `row`) or none: `FeedbackBufferFull` when they do not all
        fit, so an acknowledged label is never dropped."""
        if not self._writer.put_all(rows):
            raise FeedbackBufferFull(
                f"the feedback buffer cannot take {len(rows)} more label(s) now "
                f"({self._writer.stats.buffered} of {self._writer.capacity} waiting for the "
                "disk); nothing of this call was kept: retry it in a second"
            )

    def flush(self, timeout: float | None = None) -> bool:
        return self._writer.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        return self._writer.close(timeout)

    @property
    def stats(self) -> WriterStats:
        return self._writer.stats

    def __enter__(self) -> FeedbackWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _to_parts(self, rows: list[FeedbackRow]) -> Iterator[tuple[Path, pl.DataFrame]]:
        by_day: defaultdict[str, list[FeedbackRow]] = defaultdict(list)
        for row in rows:
            by_day[datetime.fromtimestamp(row[2] / 1e9, UTC).date().isoformat()].append(row)
        for day, group in by_day.items():
            ids, labels, times, sources, models = zip(*group, strict=True)
            frame = pl.DataFrame(
                {
                    "request_id": ids,
                    "label": labels,
                    "received_at": [t // 1000 for t in times],
                    "source": sources,
                    "model": models,
                },
                schema_overrides={"received_at": pl.Int64},
            ).with_columns(_from_us("received_at"))
            yield self.root / f"date={day}", frame.cast(dict(FEEDBACK_SCHEMA))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImportResult:
    """What `import_feedback` stored and how it matched the traffic log."""

    file: str
    rows: int
    """Labels stored."""
    duplicates: int
    """Rows whose request id appeared earlier in the file (the last one wins)."""
    matched: int
    """Distinct request ids found in the traffic log."""
    unmatched: int
    """Distinct request ids not (yet) in the traffic log; stored all the same."""
    unmatched_examples: list[str]
    stored_at: str


def read_feedback_file(path: Path) -> pl.DataFrame:
    """Read and check a CSV or Parquet file of `request_id,label[,model]` rows.

    Raises `FeedbackRejected` naming the problem: unreadable file, missing columns, labels
    that are not non-negative integers, empty request ids.
    """
    if not path.is_file():
        raise FeedbackRejected(f"feedback file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            # Ids are text even when they look like numbers ('007' must stay '007').
            frame = pl.read_csv(path, schema_overrides={"request_id": pl.String})
        else:
            raise FeedbackRejected(
                f"feedback file {path} is neither .csv nor .parquet; convert it to one of them"
            )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise FeedbackRejected(f"cannot read feedback file {path}: {exc}") from exc
    return validate_feedback(frame, str(path))


def validate_feedback(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    """`frame` reduced to request_id (String), label (Int64) and model (String or null)."""
    missing = [c for c in ("request_id", "label") if c not in frame.columns]
    if missing:
        raise FeedbackRejected(
            f"{what} lacks the column(s) {', '.join(missing)}; feedback files need "
            f"'request_id' and 'label' (the true class index) columns, found: "
            f"{', '.join(frame.columns) or 'none'}"
        )
    ids, labels = frame["request_id"], frame["label"]
    if ids.dtype != pl.String:
        if not ids.dtype.is_integer():
            raise FeedbackRejected(f"{what}: 'request_id' must be text, found {ids.dtype} values")
        ids = ids.cast(pl.String)
    if ids.null_count() or (ids.str.len_chars() == 0).any():
        bad = (ids.is_null() | (ids.str.len_chars() == 0)).arg_true().head(5).to_list()
        raise FeedbackRejected(f"{what}: empty request_id in row(s) {bad} (0-based)")
    labels = _integer_labels(labels, what)
    model = (
        frame["model"].cast(pl.String)
        if "model" in frame.columns
        else pl.Series("model", [None] * frame.height, dtype=pl.String)
    )
    return pl.DataFrame({"request_id": ids, "label": labels, "model": model})


def _integer_labels(labels: pl.Series, what: str) -> pl.Series:
    if labels.dtype.is_float():
        # 3.0 is a class index; 3.5 is not. Spreadsheets write whole numbers as floats.
        fractional = labels.is_not_null() & (labels != labels.floor())
        if fractional.any():
            rows = fractional.arg_true().head(5).to_list()
            raise FeedbackRejected(
                f"{what}: 'label' must be whole class indices; row(s) {rows} (0-based) have "
                f"fractions, e.g. {labels[rows[0]]}"
            )
        labels = labels.cast(pl.Int64)
    elif not labels.dtype.is_integer():
        example = labels.drop_nulls().head(1).to_list()
        raise FeedbackRejected(
            f"{what}: 'label' must be an integer class index, found {labels.dtype} values"
            + (f" such as {example[0]!r}" if example else "")
            + "; map class names to their indices first"
        )
    labels = labels.cast(pl.Int64)
    bad = labels.is_null() | (labels < 0)
    if bad.any():
        rows = bad.arg_true().head(5).to_list()
        raise FeedbackRejected(
            f"{what}: 'label' is missing or negative in row(s) {rows} (0-based); labels are "
            "class indices from 0"
        )
    return labels


def import_feedback(
    home: Path, path: Path, *, model: str | None = None, now: datetime | None = None
) -> ImportResult:
    """Store the labels of a feedback file and report how many match logged requests.

    `model` fills the model column where the file has none. The whole file is checked before
    anything is stored: a rejected file leaves no trace.
    """
    frame = read_feedback_file(path)
    if model is not None:
        frame = frame.with_columns(pl.col("model").fill_null(model))
    received = now or datetime.now(UTC)
    duplicates = frame.height - frame["request_id"].n_unique()
    stored = frame.with_columns(
        pl.lit(received).dt.cast_time_unit("us").dt.convert_time_zone("UTC").alias("received_at"),
        pl.lit(f"file:{path.name}").alias("source"),
    ).select(FEEDBACK_SCHEMA.names())
    part = write_part(
        feedback_root(home) / f"date={received.date().isoformat()}",
        stored.cast(dict(FEEDBACK_SCHEMA)),  # type: ignore[arg-type]
    )
    ids = frame.select(pl.col("request_id").unique())
    matched = _matched_ids(home, ids, model)
    unmatched = ids.join(matched, on="request_id", how="anti")["request_id"]
    return ImportResult(
        file=str(path),
        rows=frame.height,
        duplicates=duplicates,
        matched=matched.height,
        unmatched=unmatched.len(),
        unmatched_examples=unmatched.sort().head(5).to_list(),
        stored_at=str(part),
    )


def _matched_ids(home: Path, ids: pl.DataFrame, model: str | None) -> pl.DataFrame:
    """The ids among `ids` that appear in the traffic log (of `model`, or of any model)."""
    found: list[pl.DataFrame] = []
    for name in [model] if model is not None else traffic_models(home):
        try:
            scan = scan_traffic(home, name)
        except TrafficNotFound:
            continue
        found.append(run_query(partial(_ids_in, scan, ids), scan))
    return pl.concat(found).unique() if found else ids.clear()


def _ids_in(scan: Scan, ids: pl.DataFrame) -> pl.DataFrame:
    # The file's ids are the small side: filter the streamed traffic by them (a hash join
    # would build its table over the traffic).
    wanted = ids["request_id"].implode()
    return (
        scan.frame.select("request_id")
        .filter(pl.col("request_id").is_in(wanted))
        .unique()
        .collect(engine="streaming")
    )


def _from_us(column: str) -> pl.Expr:
    return pl.from_epoch(pl.col(column), time_unit="us").dt.replace_time_zone("UTC")
