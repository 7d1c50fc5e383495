"""Ground truth from files: `kiln feedback import` reads a CSV or Parquet file of
``request_id,label[,model]`` rows (classifiers) or ``request_id,value[,model]`` rows
(regressors), checks every row, stores the valid ones in the feedback store
(``feedback/date=…/`` under KILN_HOME, or in the bucket of KILN_STORAGE_URL) and reports how
many match logged requests.

A file is checked whole before anything is stored: one with invalid rows is refused as a
whole, or (`skip_invalid`) stored without them, with the first of them reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from kiln.errors import FeedbackRejected, InvalidArgument, TrafficNotFound, quote
from kiln.traffic.labels import REGRESSION, feedback_problem, label_problem, shown_label
from kiln.traffic.layout import feedback_root
from kiln.traffic.readers import Scan, run_query, scan_traffic, traffic_models
from kiln.traffic.schema import FEEDBACK_SCHEMA
from kiln.traffic.store import LogRoot, LogStore, as_store


@dataclass(frozen=True)
class ImportResult:
    """What `import_feedback` stored and how it matched the traffic log."""

    file: str
    rows: int
    """Labels and values stored."""
    duplicates: int
    """Rows whose request id appeared earlier in the file (the last one wins)."""
    matched: int
    """Distinct request ids found in the traffic log."""
    unmatched: int
    """Distinct request ids not (yet) in the traffic log; stored all the same."""
    unmatched_examples: list[str]
    stored_at: str | None
    """The part file written (its path, or its ``s3://`` URL); None when no row was valid."""
    refused: int = 0
    """Invalid rows left out (only with `skip_invalid`; otherwise the file is refused)."""
    refused_examples: list[dict[str, Any]] = field(default_factory=list)
    """The first refused rows: row (0-based), line (of a CSV), request_id, label (and value,
    when the file has that column), reason."""
    unchecked_models: list[str] = field(default_factory=list)
    """Models named by the file whose classes are not known here: their labels were only
    checked to be class indices (0-`MAX_LABEL`)."""
    values: int = 0
    """Of the `rows` stored, those that are values (regression targets), not labels."""


ClassCount = Callable[[str], int | None]
"""How many classes a model has (None when not known): what labels are checked against."""
TaskOf = Callable[[str], str | None]
"""A model's task, "classification" or "regression" (None when not known): whether its rows
must carry a label or a value."""

EXAMPLES = 5
_NUMBER = re.compile(r"[0-9.eE+-]+")


@dataclass(frozen=True)
class CheckedFeedback:
    """A feedback file split into the rows that can be stored and the ones that cannot."""

    what: str
    valid: pl.DataFrame
    """request_id (String), label (Int64 or null), value (Float64 or null), model (String or
    null), row (0-based)."""
    invalid: pl.DataFrame
    """row (0-based), request_id, label (as written, text), value (as written; only when the
    file has a value column), reason."""
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
    """Read and check a CSV or Parquet file of `request_id,label[,model]` or
    `request_id,value[,model]` rows.

    Raises `FeedbackRejected` naming the problem: unreadable file, missing columns, labels
    that are not class indices (0-`MAX_LABEL`), values that are not finite numbers, empty
    request ids.
    """
    checked = check_feedback(path)
    if checked.invalid.height:
        raise checked.refusal()
    return checked.valid.drop("row")


def check_feedback(
    path: Path,
    *,
    model: str | None = None,
    classes: ClassCount | None = None,
    tasks: TaskOf | None = None,
) -> CheckedFeedback:
    """Read a feedback file and check every row; raises `FeedbackRejected` only for what
    concerns the whole file (unreadable, no rows, missing or unusable columns).

    A row is invalid when its request id is empty, when it carries both or neither of a
    label and a value, when its model (the row's `model` column, else `model`) is a
    regression model (`tasks`) and the row has a label or a classifier and the row has a
    value, when its label is not a class index of its model (`label_problem`, against the
    class count `classes` gives; without it, the index range alone), or when its value is
    not a finite number.
    """
    frame, csv = _read_table(path)
    what = str(path)
    if frame.height == 0:
        raise FeedbackRejected(
            f"{what} has a header but no rows: nothing to import (expected request_id,label "
            "or request_id,value rows under the header)"
        )
    has_value = "value" in frame.columns
    missing = [
        c
        for c in ("request_id", "label")
        if c not in frame.columns and not (c == "label" and has_value)
    ]
    if missing:
        raise FeedbackRejected(
            f"{what} lacks the column(s) {', '.join(missing)}; feedback files need "
            f"'request_id' and 'label' (the true class index) columns, or 'request_id' and "
            f"'value' (the true target of a regression model), found: "
            f"{', '.join(frame.columns) or 'none'}"
        )
    ids = frame["request_id"]
    if ids.dtype != pl.String:
        if not ids.dtype.is_integer():
            raise FeedbackRejected(f"{what}: 'request_id' must be text, found {ids.dtype} values")
        ids = ids.cast(pl.String)
    nothing = pl.Series([None] * frame.height, dtype=pl.String)
    try:
        labels = frame["label"].cast(pl.String) if "label" in frame.columns else nothing
        models = frame["model"].cast(pl.String) if "model" in frame.columns else nothing
    except pl.exceptions.PolarsError as exc:
        raise FeedbackRejected(
            f"{what}: 'label' must be integer class indices (and 'model' text), found "
            f"{frame['label'].dtype} labels; map class names to their indices first"
        ) from exc
    values = _value_column(frame, what) if has_value else nothing
    if model is not None:
        models = models.fill_null(model)
    rows = pl.DataFrame(
        {"request_id": ids, "label": labels, "value": values, "model": models}
    ).with_row_index("row")
    counts: dict[str, int | None] = {}
    kinds: dict[str, str | None] = {}
    bad_models: dict[str, str] = {}
    for name in models.unique().drop_nulls():
        try:
            counts[name] = classes(name) if classes else None
            kinds[name] = tasks(name) if tasks else None
        except InvalidArgument as exc:  # not a model name at all: its rows are invalid
            bad_models[name] = exc.message
    given = pl.col("label").str.strip_chars().str.len_chars() > 0
    rows = rows.with_columns(
        pl.when(given.fill_null(False)).then(pl.col("label")).alias("label"),
        _value_given(has_value).alias("value_given"),
    )
    pairs = rows.filter(~pl.col("value_given")).select("label", "model").unique()
    verdicts = _label_verdicts(pairs, counts, kinds)
    rows = rows.join(verdicts, on=["label", "model"], how="left", nulls_equal=True)
    rows = rows.with_columns(
        _value_reason(kinds, bad_models).alias("value_reason"),
        pl.col("value").str.strip_chars().cast(pl.Float64, strict=False).alias("number"),
    )
    empty_id = pl.col("request_id").is_null() | (pl.col("request_id").str.len_chars() == 0)
    rows = rows.with_columns(
        pl.when(empty_id)
        .then(pl.lit("the request id is empty: give the id the server returned"))
        .when(pl.col("value_given"))
        .then(pl.col("value_reason"))
        .when(pl.lit(has_value) & pl.col("label").is_null())
        .then(pl.lit(feedback_problem(None, None)))
        .otherwise(pl.col("model").replace_strict(bad_models, default=pl.col("reason")))
        .alias("reason")
    ).sort("row")
    shown = ["row", "request_id", "label", *(["value"] if has_value else []), "reason"]
    return CheckedFeedback(
        what=what,
        valid=rows.filter(pl.col("reason").is_null()).select(
            "request_id",
            pl.when(~pl.col("value_given")).then(pl.col("parsed")).alias("label"),
            pl.when(pl.col("value_given")).then(pl.col("number")).alias("value"),
            "model",
            "row",
        ),
        invalid=rows.filter(pl.col("reason").is_not_null()).select(shown),
        csv=csv,
        unchecked_models=sorted(
            m for m, n in counts.items() if n is None and kinds.get(m) != REGRESSION
        ),
    )


def _value_column(frame: pl.DataFrame, what: str) -> pl.Series:
    """The file's `value` column as text (a CSV's is already): numbers of any type."""
    column = frame["value"]
    if column.dtype == pl.String or column.dtype.is_numeric() or column.dtype == pl.Null:
        return column.cast(pl.String)
    raise FeedbackRejected(
        f"{what}: 'value' must be numbers (the true target of a regression model), found "
        f"{column.dtype} values"
    )


def _value_given(has_value: bool) -> pl.Expr:
    """True where the row carries a value (a regression model's feedback)."""
    if not has_value:
        return pl.lit(False)
    return (pl.col("value").str.strip_chars().str.len_chars() > 0).fill_null(False)


def _value_reason(kinds: dict[str, str | None], bad_models: dict[str, str]) -> pl.Expr:
    """Why a row with a value cannot be stored (`feedback_problem`'s rules, vectorised: a
    value per row, not a few distinct labels), or null."""
    number = pl.col("value").str.strip_chars().cast(pl.Float64, strict=False)
    classifier = [m for m, task in kinds.items() if task is not None and task != REGRESSION]
    both = feedback_problem(0, 0.0)
    return (
        pl.when(pl.col("label").is_not_null())
        .then(pl.lit(both))
        .when(pl.col("model").is_in(list(bad_models)))
        .then(pl.col("model").replace_strict(bad_models, default=None))
        .when(pl.col("model").is_in(classifier))
        .then(
            pl.lit("the model is a classification model: send the true class index as label, ")
            + pl.lit("not a value (got value ")
            + pl.col("value").str.strip_chars()
            + pl.lit(")")
        )
        .when(number.is_null())
        .then(pl.lit("value ") + pl.col("value").str.strip_chars() + pl.lit(" is not a number"))
        .when(~number.is_finite())
        .then(
            pl.lit("value ")
            + pl.col("value").str.strip_chars()
            + pl.lit(" is not a finite number: a regression model's feedback is its true ")
            + pl.lit("target, a finite float")
        )
        .otherwise(pl.lit(None, pl.String))
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


def _label_verdicts(
    pairs: pl.DataFrame, counts: dict[str, int | None], kinds: dict[str, str | None]
) -> pl.DataFrame:
    """For each distinct (label as text, model): the label as an integer, or why it is not a
    class index of the model (or the model takes values). One check per distinct pair, not
    per row."""
    values: list[int | None] = []
    reasons: list[str | None] = []
    for text, model in pairs.iter_rows():
        value, reason = _parse_label(text)
        if value is not None and model is not None and kinds.get(model) == REGRESSION:
            value, reason = None, feedback_problem(value, None, REGRESSION)
        elif value is not None:
            problem = label_problem(value, counts.get(model) if model is not None else None)
            if problem and text.strip() != str(value):
                # Name the label as the file wrote it (1e30, not its 31 digits).
                written = text.strip()
                short = len(written) <= 24 and _NUMBER.fullmatch(written)
                shown = written if short else quote(written, 24)
                problem = problem.replace(f"label {shown_label(value)}", f"label {shown}", 1)
            value, reason = (None, problem) if problem else (value, None)
        values.append(value)
        reasons.append(reason)
    return pairs.with_columns(
        pl.Series("parsed", values, dtype=pl.Int64), pl.Series("reason", reasons, dtype=pl.String)
    )


def _parse_label(text: str | None) -> tuple[int | None, str | None]:  # noqa: PLR0911
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
    home: LogRoot,
    path: Path,
    *,
    model: str | None = None,
    now: datetime | None = None,
    classes: ClassCount | None = None,
    skip_invalid: bool = False,
    tasks: TaskOf | None = None,
) -> ImportResult:
    """Store the labels or values of a feedback file and report how many match logged
    requests.

    `model` fills the model column where the file has none. Labels are checked against their
    model's classes (`classes`, e.g. from the registry); values to be finite; each row's kind
    against its model's task (`tasks`: a regression model takes values, a classification
    model labels). The whole file is checked before
    anything is stored: a file with invalid rows is refused as a whole (`FeedbackRejected`
    listing the first of them) and leaves no trace, unless `skip_invalid`, which stores the
    valid rows and reports the others. `home` is a KILN_HOME or a `LogStore`; into a bucket,
    the part file is uploaded before this returns (`StorageUnavailable` or
    `StorageAccessDenied` otherwise, and nothing is stored).
    """
    store = as_store(home)
    checked = check_feedback(path, model=model, classes=classes, tasks=tasks)
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
        part = store.sink("feedback").store_now(
            feedback_root(store.write_root) / f"date={received.date().isoformat()}",
            stored.cast(dict(FEEDBACK_SCHEMA)),  # type: ignore[arg-type]
        )
    ids = frame.select(pl.col("request_id").unique())
    matched = _matched_ids(store, ids, model)
    unmatched = ids.join(matched, on="request_id", how="anti")["request_id"]
    return ImportResult(
        file=str(path),
        rows=frame.height,
        duplicates=duplicates,
        matched=matched.height,
        unmatched=unmatched.len(),
        unmatched_examples=unmatched.sort().head(EXAMPLES).to_list(),
        stored_at=part,
        refused=checked.invalid.height,
        refused_examples=checked.examples(),
        unchecked_models=checked.unchecked_models,
        values=int(frame["value"].is_not_null().sum()),
    )


def _matched_ids(store: LogStore, ids: pl.DataFrame, model: str | None) -> pl.DataFrame:
    """The ids among `ids` that appear in the traffic log (of `model`, or of any model)."""
    found: list[pl.DataFrame] = []
    for name in [model] if model is not None else traffic_models(store):
        try:
            scan = scan_traffic(store, name)
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
