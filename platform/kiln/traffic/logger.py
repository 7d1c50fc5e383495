"""The request logger: one `TrafficRecord` per served request, written to Parquet in the
background under ``traffic/model=NAME/date=YYYY-MM-DD/`` of its `LogStore` (KILN_HOME, or
the bucket of KILN_STORAGE_URL through a local outbox)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kiln.traffic.layout import model_dir, remove_stale_temporaries, traffic_root
from kiln.traffic.records import (
    TrafficColumns,
    TrafficRecord,
    columns_to_frame,
    record_row,
    records_to_frame,
)
from kiln.traffic.store import LogRoot, as_store
from kiln.traffic.writer import BackgroundWriter, WriterStats


class TrafficSettings(BaseSettings):
    """How traffic is logged. Every field can be set as `KILN_TRAFFIC_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="KILN_TRAFFIC_", extra="ignore")

    input_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of requests whose input tensor (a text model's strings) is logged (drift needs
    some); 0 logs none. A text model's token counts are always logged.
    Everything else about a request (output, latency, status) is always logged."""

    flush_rows: int = Field(default=10_000, ge=1)
    """Write a part file as soon as this many rows wait; also the most rows one file holds."""

    flush_interval_s: float = Field(default=5.0, gt=0)
    """...or when this much time has passed since the last write. A process killed with
    SIGKILL loses at most this much traffic (or `max_buffered_rows`, whichever is less)."""

    max_buffered_rows: int = Field(default=100_000, ge=1)
    """Rows held in memory at most; when the disk cannot keep up, further rows are dropped
    and counted (`kiln_traffic_rows_dropped_total`) rather than slowing requests down."""


class TrafficLogger:
    """Logs requests without making them wait: `log` appends to a bounded buffer.

    Create one per process (server, BentoML worker) over a KILN_HOME or a `LogStore`
    (`kiln.traffic.log_store(settings)`); call `close()` on shutdown (the server does on
    SIGTERM) so that every buffered row is written.
    """

    def __init__(self, home: LogRoot, settings: TrafficSettings | None = None) -> None:
        self.settings = settings or TrafficSettings()
        store = as_store(home)
        self.root = traffic_root(store.write_root)
        remove_stale_temporaries(self.root)
        # The first conversion imports what pyarrow loads lazily (pandas among it: ~0.3 s of
        # CPU). Pay it now, at startup, not on the writer thread while requests are served.
        records_to_frame([TrafficRecord("warm-up", 0, "", None, 0, output=np.zeros((1, 2)))])
        self._sample_rate = self.settings.input_sample_rate
        self._draw = random.Random().random
        self._writer: BackgroundWriter[tuple[Any, ...]] = BackgroundWriter(
            "traffic",
            self._to_parts,
            max_rows=self.settings.max_buffered_rows,
            flush_rows=self.settings.flush_rows,
            flush_interval_s=self.settings.flush_interval_s,
            sink=store.sink("traffic"),
        )

    def log(self, record: TrafficRecord) -> bool:
        """Buffer one request; False when it was dropped (buffer full or logger closed).
        Its input is kept or not by `input_sample_rate`."""
        row = record_row(record)
        if (row[_INPUT] is not None or row[_TEXTS] is not None) and not self.keep_input():
            row = tuple(None if i in (_INPUT, _TEXTS) else v for i, v in enumerate(row))
        return self._writer.put(row)

    def keep_input(self) -> bool:
        """Whether the next request's input (its tensor, or a text model's strings) is to be
        logged (`input_sample_rate`): callers of `log_row` ask before making the row, so that
        an input not logged is not held."""
        rate = self._sample_rate
        return rate >= 1.0 or (rate > 0.0 and self._draw() < rate)

    def log_row(self, row: tuple[Any, ...]) -> bool:
        """Buffer one request given as a row: a tuple in `TrafficColumns` order (what
        `record_row` makes of a `TrafficRecord`); False when it was dropped.

        The cheapest way in, for callers on a busy event loop; the input is logged as given
        (ask `keep_input()` first to apply the sample rate). Hold only plain values and
        numpy arrays in it, never objects the garbage collector tracks (dataclasses, dicts):
        rows wait in memory for seconds, and ten thousand tracked objects waiting there make
        every collection in the process slower (measured: +5% server CPU per request).
        """
        if len(row) != _WIDTH:  # one bad row would cost its whole flush later
            raise ValueError(
                f"a traffic row has {len(TrafficColumns._fields)} fields "
                f"({', '.join(TrafficColumns._fields)}), got {len(row)}"
            )
        return self._writer.put(row)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything logged before this call; True when done within `timeout`."""
        return self._writer.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Write everything buffered and stop; True when finished within `timeout`."""
        return self._writer.close(timeout)

    @property
    def stats(self) -> WriterStats:
        return self._writer.stats

    def __enter__(self) -> TrafficLogger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------------------------

    def _to_parts(self, rows: list[tuple[Any, ...]]) -> Iterator[tuple[Path, pl.DataFrame]]:
        frame = columns_to_frame(TrafficColumns.from_rows(rows))
        days = frame["timestamp"].dt.date()
        if frame["model"].n_unique() == 1 and days.n_unique() == 1:  # the usual flush
            yield self._directory(frame["model"][0], days[0]), frame
            return
        keyed = frame.with_columns(days.alias(_DAY))
        for (model, day), part in keyed.partition_by("model", _DAY, as_dict=True).items():
            yield self._directory(str(model), cast(date, day)), part.drop(_DAY)

    def _directory(self, model: str, day: date) -> Path:
        return model_dir(self.root, model) / f"date={day.isoformat()}"


_DAY = "__kiln_day"
_WIDTH = len(TrafficColumns._fields)
_INPUT = TrafficColumns._fields.index("input")
_TEXTS = TrafficColumns._fields.index("texts")
