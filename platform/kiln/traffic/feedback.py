"""Ground truth: labels keyed by request id, stored under ``KILN_HOME/feedback/date=…/``.

Three ways in, one store: `FeedbackWriter.add` for servers (the gRPC kiln.v1 feedback service
and the BentoML HTTP endpoint call it; it never waits on disk), and `import_feedback` for files
(`kiln feedback import`). Labels for request ids that match no logged request are kept (the
request's row may still be in a server's buffer, or in another server's log) and reported as
unmatched.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from kiln.errors import (
    FeedbackBufferFull,
    FeedbackRejected,
    InvalidArgument,
    TrafficNotFound,
    quote,
)
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
    valid = f"0-{num_classes - 1}" if num_classes is not None else f"0-{MAX_LABEL}"
    if label < 0:
        return f"label {_shown(label)} is negative; labels are class indices from 0 ({valid})"
    if num_classes is not None and label >= num_classes:
        return (
            f"label {_shown(label)} is out of range: the model has {num_classes} classes, "
            f"valid labels are {valid}"
        )
    if label > MAX_LABEL:
        return f"label {_shown(label)} is out of range: labels are class indices {valid}"
    return None


def _shown(label: int) -> str:
    """`label` for a message: whole up to 24 digits, else its first digits and its length
    (an echoed 4,000-digit label would make a 4 KB reason)."""
    if label.bit_length() <= 80:
        return str(label)
    digits = str(label) if label.bit_length() < 14_000 else ""
    if not digits:
        return "(a number of over 4,000 digits)"
    return f"{digits[:12]}... ({len(digits.lstrip('-'))} digits)"


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
    stored_at: str | None
    """The part file written; None when no row was valid."""
    refused: int = 0
    """Invalid rows left out (only with `skip_invalid`; otherwise the file is refused)."""
    refused_examples: list[dict[str, Any]] = field(default_factory=list)
    """The first refused rows: row (0-based), line (of a CSV), request_id, label, reason."""
    unchecked_models: list[str] = field(default_factory=list)
    """Models named by the file whose classes are not known here: their labels were only
    checked to be class indices (0-`MAX_LABEL`)."""


ClassCount = Callable[[str], int | None]
"""How many classes a model has (None when not known): what labels are checked against."""

EXAMPLES = 5
_NUMBER = re.compile(r"[0-9.eE+-]+")


@dataclass(frozen=True)
class CheckedFeedback:
    """A feedback file split into the rows that can be stored and the ones that cannot."""

    what: str
    valid: pl.DataFrame
    """request_id (String), label (Int64), model (String or null), row (0-based)."""
    invalid: pl.DataFrame
    """row (0-based), request_id, label (as written, text), reason."""
    csv: bool
    unchecked_models: list[str]

    @property
    def total(self) -> int:
        return self.valid.height + self.invalid.height

    def examples(self, limit: int = EXAMPLES) -> list[dict[str, Any]]:
        rows = self.invalid.sort("row").head(limit).iter_rows(named=True)
        return [r | ({"line": r["row"] + 2} if self.csv else {}) for r in rows]

    def refusal(self) -> FeedbackRejected:
        """The error for a file refused as a whole because of its invalid rows."""
        where = "line" if self.csv else "row"
        lines = [
            f"  {where} {e['line'] if self.csv else e['row']}: {e['reason']}"
            + (f" (request {quote(e['request_id'])})" if e["request_id"] else "")
            for e in self.examples()
        ]
        more = self.invalid.height - len(lines)
        return FeedbackRejected(
            f"{self.what}: {self.invalid.height} of {self.total} rows are invalid, nothing was "
            "imported:\n"
            + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix them, or pass --skip-invalid to import the valid rows and report the others"
        )


def read_feedback_file(path: Path) -> pl.DataFrame:
    """Read and check a CSV or Parquet file of `request_id,label[,model]` rows.

    Raises `FeedbackRejected` naming the problem: unreadable file, missing columns, labels
    that are not class indices (0-`MAX_LABEL`), empty request ids.
    """
    checked = check_feedback(path)
    if checked.invalid.height:
        raise checked.refusal()
    return checked.valid.drop("row")


def check_feedback(
    path: Path, *, model: str | None = None, classes: ClassCount | None = None
) -> CheckedFeedback:
    """Read a feedback file and check every row; raises `FeedbackRejected` only for what
    concerns the whole file (unreadable, no rows, missing or unusable columns).

    A row is invalid when its request id is empty or its label is not a class index of its
    model (`label_problem`; the model is the row's `model` column, else `model`, and its
    class count comes from `classes`; without either, the index range alone is checked).
    """
    frame, csv = _read_table(path)
    what = str(path)
    if frame.height == 0:
        raise FeedbackRejected(
            f"{what} has a header but no rows: nothing to import (expected request_id,label "
            "rows under the header)"
        )
    missing = [c for c in ("request_id", "label") if c not in frame.columns]
    if missing:
        raise FeedbackRejected(
            f"{what} lacks the column(s) {', '.join(missing)}; feedback files need "
            f"'request_id' and 'label' (the true class index) columns, found: "
            f"{', '.join(frame.columns) or 'none'}"
        )
    ids = frame["request_id"]
    if ids.dtype != pl.String:
        if not ids.dtype.is_integer():
            raise FeedbackRejected(f"{what}: 'request_id' must be text, found {ids.dtype} values")
        ids = ids.cast(pl.String)
    try:
        labels = frame["label"].cast(pl.String)
        models = (
            frame["model"].cast(pl.String)
            if "model" in frame.columns
            else pl.Series("model", [None] * frame.height, dtype=pl.String)
        )
    except pl.exceptions.PolarsError as exc:
        raise FeedbackRejected(
            f"{what}: 'label' must be integer class indices (and 'model' text), found "
            f"{frame['label'].dtype} labels; map class names to their indices first"
        ) from exc
    if model is not None:
        models = models.fill_null(model)
    rows = pl.DataFrame({"request_id": ids, "label": labels, "model": models}).with_row_index("row")
    counts: dict[str, int | None] = {}
    bad_models: dict[str, str] = {}
    for name in models.unique().drop_nulls():
        try:
            counts[name] = classes(name) if classes else None
        except InvalidArgument as exc:  # not a model name at all: its rows are invalid
            bad_models[name] = exc.message
    verdicts = _label_verdicts(rows.select("label", "model").unique(), counts)
    rows = rows.join(verdicts, on=["label", "model"], how="left", nulls_equal=True)
    empty_id = pl.col("request_id").is_null() | (pl.col("request_id").str.len_chars() == 0)
    rows = rows.with_columns(
        pl.when(empty_id)
        .then(pl.lit("the request id is empty: give the id the server returned"))
        .otherwise(pl.col("model").replace_strict(bad_models, default=pl.col("reason")))
        .alias("reason")
    ).sort("row")
    return CheckedFeedback(
        what=what,
        valid=rows.filter(pl.col("reason").is_null()).select(
            "request_id", pl.col("value").alias("label"), "model", "row"
        ),
        invalid=rows.filter(pl.col("reason").is_not_null()).select(
            "row", "request_id", "label", "reason"
        ),
        csv=csv,
        unchecked_models=sorted(m for m, n in counts.items() if n is None),
    )


def _read_table(path: Path) -> tuple[pl.DataFrame, bool]:
    """The file's rows as read (every CSV column as text: ids such as '007' and labels too
    large for int64 must reach the checks as written); and whether it is a CSV."""
    if not path.is_file():
        raise FeedbackRejected(f"feedback file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".txt"):
        raise FeedbackRejected(
            f"feedback file {path} is neither .csv nor .parquet; convert it to one of them"
        )
    if path.stat().st_size == 0:
        raise FeedbackRejected(f"feedback file {path} is empty: expected a request_id,label header")
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path), False
        return pl.read_csv(path, infer_schema=False), True
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise FeedbackRejected(f"cannot read feedback file {path}: {exc}") from exc


def _label_verdicts(pairs: pl.DataFrame, counts: dict[str, int | None]) -> pl.DataFrame:
    """For each distinct (label as text, model): the label as an integer, or why it is not a
    class index of the model. One `label_problem` call per distinct pair, not per row."""
    values: list[int | None] = []
    reasons: list[str | None] = []
    for text, model in pairs.iter_rows():
        value, reason = _parse_label(text)
        if value is not None:
            problem = label_problem(value, counts.get(model) if model is not None else None)
            if problem and text.strip() != str(value):
                # Name the label as the file wrote it (1e30, not its 31 digits).
                written = text.strip()
                short = len(written) <= 24 and _NUMBER.fullmatch(written)
                shown = written if short else quote(written, 24)
                problem = problem.replace(f"label {_shown(value)}", f"label {shown}", 1)
            value, reason = (None, problem) if problem else (value, None)
        values.append(value)
        reasons.append(reason)
    return pairs.with_columns(
        pl.Series("value", values, dtype=pl.Int64), pl.Series("reason", reasons, dtype=pl.String)
    )


def _parse_label(text: str | None) -> tuple[int | None, str | None]:
    """A label as written: (its integer value, None), or (None, why it is not an integer)."""
    if text is None or not text.strip():
        return None, "the label is missing"
    stripped = text.strip()
    try:
        return int(stripped), None
    except ValueError:
        pass
    try:
        number = float(stripped)
    except (ValueError, OverflowError):
        return None, (
            f"label {quote(text)} is not an integer class index; map class names to their "
            "indices first"
        )
    if math.isinf(number) and _NUMBER.fullmatch(stripped):  # digits beyond a float's range
        return None, f"label {quote(stripped)} is out of range: labels are class indices"
    if not math.isfinite(number):
        return None, f"label {quote(text)} is not a number: labels are class indices from 0"
    if number != math.floor(number):
        return None, f"label {stripped} has a fraction: labels are whole class indices"
    return int(number), None  # 3.0: spreadsheets write whole numbers as floats


def import_feedback(
    home: Path,
    path: Path,
    *,
    model: str | None = None,
    now: datetime | None = None,
    classes: ClassCount | None = None,
    skip_invalid: bool = False,
) -> ImportResult:
    """Store the labels of a feedback file and report how many match logged requests.

    `model` fills the model column where the file has none. Labels are checked against their
    model's classes (`classes`, e.g. from the registry). The whole file is checked before
    anything is stored: a file with invalid rows is refused as a whole (`FeedbackRejected`
    listing the first of them) and leaves no trace, unless `skip_invalid`, which stores the
    valid rows and reports the others.
    """
    checked = check_feedback(path, model=model, classes=classes)
    if checked.invalid.height and not skip_invalid:
        raise checked.refusal()
    frame = checked.valid.drop("row")
    received = now or datetime.now(UTC)
    duplicates = frame.height - frame["request_id"].n_unique()
    part = None
    if frame.height:
        stored = frame.with_columns(
            pl.lit(received)
            .dt.cast_time_unit("us")
            .dt.convert_time_zone("UTC")
            .alias("received_at"),
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
        unmatched_examples=unmatched.sort().head(EXAMPLES).to_list(),
        stored_at=None if part is None else str(part),
        refused=checked.invalid.height,
        refused_examples=checked.examples(),
        unchecked_models=checked.unchecked_models,
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
