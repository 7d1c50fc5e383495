"""Ground truth from servers: labels (classifiers) and values (regressors) keyed by request
id, buffered and written in the background under ``feedback/date=…/`` of its `LogStore`
(KILN_HOME, or the bucket of KILN_STORAGE_URL through a local outbox).

The gRPC kiln.v1 feedback service and the BentoML HTTP endpoint call `FeedbackWriter.add`;
it never waits on disk. Files come in through `kiln.traffic.feedback_files` into the same
store. Labels for request ids that match no logged request are kept (the request's row may
still be in a server's buffer, or in another server's log).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from kiln.errors import FeedbackBufferFull, FeedbackRejected, quote
from kiln.traffic.labels import feedback_problem
from kiln.traffic.layout import feedback_root
from kiln.traffic.logger import TrafficSettings
from kiln.traffic.schema import FEEDBACK_SCHEMA
from kiln.traffic.store import LogRoot, as_store
from kiln.traffic.writer import BackgroundWriter, WriterStats

FeedbackRow = tuple[str, int | None, int, str, str | None, float | None]
"""(request_id, label or None, received_at in ns since the epoch, source, model or None,
value or None): exactly one of label and value is set."""


class FeedbackWriter:
    """Buffers feedback and writes it in the background, like the traffic logger.

    `add` is what a transport's feedback handler calls, once per item, on the request path.
    """

    def __init__(self, home: LogRoot, settings: TrafficSettings | None = None) -> None:
        settings = settings or TrafficSettings()
        store = as_store(home)
        self.root = feedback_root(store.write_root)
        self._writer: BackgroundWriter[FeedbackRow] = BackgroundWriter(
            "feedback",
            self._to_parts,
            max_rows=settings.max_buffered_rows,
            flush_rows=settings.flush_rows,
            flush_interval_s=settings.flush_interval_s,
            sink=store.sink("feedback"),
        )

    def add(
        self,
        request_id: str,
        label: int | None = None,
        *,
        value: float | None = None,
        model: str | None = None,
        source: str = "grpc",
        received_at_ns: int = 0,
        num_classes: int | None = None,
        task: str | None = None,
    ) -> None:
        """Record that request `request_id` had true class `label` (a classifier) or true
        target `value` (a regressor). Never waits on disk.

        Raises `FeedbackRejected` (INVALID_ARGUMENT) for an empty id, for both or neither of
        `label` and `value`, a label outside `0 .. num_classes - 1` (outside the int32 range
        when `num_classes` is None), a value that is NaN or infinite, or the wrong kind for
        `task` (when given); and `FeedbackBufferFull` (RESOURCE_EXHAUSTED) when the buffer is
        full: once this returns the feedback is kept.
        """
        row = self.row(
            request_id, label, model, source, received_at_ns, num_classes, value=value, task=task
        )
        self.add_all([row])

    def row(
        self,
        request_id: str,
        label: int | None,
        model: str | None = None,
        source: str = "grpc",
        received_at_ns: int = 0,
        num_classes: int | None = None,
        *,
        value: float | None = None,
        task: str | None = None,
    ) -> FeedbackRow:
        """One checked row for `add_all`; raises `FeedbackRejected` as `add` does."""
        if not request_id:
            raise FeedbackRejected("feedback needs the request id the server returned")
        problem = feedback_problem(label, value, task, num_classes)
        if problem:
            raise FeedbackRejected(f"feedback for request {quote(request_id)}: {problem}")
        return (
            request_id,
            None if label is None else int(label),
            received_at_ns or time.time_ns(),
            source,
            model or None,
            None if value is None else float(value),
        )

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
            ids, labels, times, sources, models, values = zip(*group, strict=True)
            frame = pl.DataFrame(
                {
                    "request_id": ids,
                    "label": labels,
                    "received_at": [t // 1000 for t in times],
                    "source": sources,
                    "model": models,
                    "value": values,
                },
                schema_overrides={"received_at": pl.Int64, "label": pl.Int64, "value": pl.Float64},
            ).with_columns(_from_us("received_at"))
            yield self.root / f"date={day}", frame.cast(dict(FEEDBACK_SCHEMA))  # type: ignore[arg-type]


def _from_us(column: str) -> pl.Expr:
    return pl.from_epoch(pl.col(column), time_unit="us").dt.replace_time_zone("UTC")
