"""A bounded buffer drained to Parquet by one background thread.

The caller's side (`put`) appends to a deque under a lock that only `put` and `close` take
(held for a few hundred nanoseconds) and returns: it never touches the disk and never waits
for the writer. When the buffer holds `max_rows`, new rows are dropped and
counted; the writer thread logs the count, and `stats` exposes it for Prometheus.

The writer thread wakes every `flush_interval_s`, or as soon as `flush_rows` rows wait, takes
everything buffered, turns it into part files (`to_parts`) and writes each atomically. A
process killed with SIGKILL loses what was buffered and not yet written: at most `max_rows`
rows, normally at most `flush_interval_s` worth of traffic. `close()` (called on SIGTERM by
whoever owns the writer) writes everything before returning.

Part files go through a `PartSink`: written in place under KILN_HOME, or into an outbox and
uploaded to a bucket (`kiln.traffic.outbox`), at the end of each flush; what cannot be
uploaded yet waits on disk (`WriterStats.pending_upload_files`) and is retried at the next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import polars as pl

from kiln.traffic.outbox import LocalSink, PartSink

log = logging.getLogger("kiln.traffic")

Row = TypeVar("Row")
PartsFn = Callable[[list[Row]], Iterable[tuple[Path, pl.DataFrame]]]
"""Turns buffered rows into (directory, frame) pairs, one part file each."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters since the writer started (monotonic; Prometheus counters read them)."""

    written: int
    """Rows on disk in complete part files."""
    dropped_full: int
    """Rows refused because the buffer was full."""
    dropped_closed: int
    """Rows offered after `close()`."""
    failed: int
    """Rows lost because writing their part file failed (disk full, permissions, ...)."""
    files: int
    """Part files written."""
    buffered: int
    """Rows waiting in the buffer now."""
    pending_upload_files: int = 0
    """Part files written to the local outbox and not yet uploaded to the bucket (always 0
    for local storage): non-zero while the bucket cannot be reached."""
    pending_upload_rows: int = 0
    """Rows in those files (counted in `written`: they are on disk and will be uploaded)."""

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_closed + self.failed


class BackgroundWriter(Generic[Row]):
    """Buffers rows and writes them as Parquet part files from a daemon thread.

    `max_rows` bounds memory (rows beyond it are dropped and counted); a flush happens when
    `flush_rows` rows wait or `flush_interval_s` has passed, whichever comes first. `sink`
    (default: files written in place) takes each part file; the directories `to_parts`
    yields are below its store's `write_root`.
    """

    def __init__(
        self,
        name: str,
        to_parts: PartsFn[Row],
        *,
        max_rows: int,
        flush_rows: int,
        flush_interval_s: float,
        sink: PartSink | None = None,
    ) -> None:
        if max_rows < 1 or flush_rows < 1 or flush_interval_s <= 0:
            raise ValueError(
                "max_rows and flush_rows must be >= 1 and flush_interval_s > 0, got "
                f"{max_rows}, {flush_rows}, {flush_interval_s}"
            )
        self.name = name
        self._to_parts = to_parts
        self._sink: PartSink = sink or LocalSink()
        self._max_rows = max_rows
        self._flush_rows = min(flush_rows, max_rows)
        self._interval = flush_interval_s
        self._rows: deque[Row] = deque()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._requested = 0  # flush generations asked for (under _done)
        self._completed = 0  # flush generations finished (under _done)
        self._closed = False
        self._exited = False  # the thread has written its last row (under _done)
        self._written = 0
        self._dropped_full = 0
        self._dropped_closed = 0
        self._failed = 0
        self._files = 0
        # Orders put() against close(): once close() holds it, no row can join the buffer
        # after the writer's final drain. Never held while writing.
        self._put_lock = threading.Lock()
        self._reported_drops = 0
        self._thread = threading.Thread(target=self._run, name=f"kiln-{name}-writer", daemon=True)
        self._thread.start()

    # -- the caller's side ----------------------------------------------------------------------

    def put(self, row: Row) -> bool:
        """Buffer one row; False (and counted) when it had to be dropped. Never waits on disk."""
        with self._put_lock:
            if self._closed:
                self._dropped_closed += 1
                return False
            size = len(self._rows)
            if size >= self._max_rows:
                self._dropped_full += 1
                full = True
            else:
                self._rows.append(row)
                full = False
        if full or size + 1 == self._flush_rows:
            self._wake.set()
        return not full

    def put_all(self, rows: Sequence[Row]) -> bool:
        """Buffer every row of `rows`, or none of them; False (nothing counted) when they do
        not all fit. For callers that acknowledge rows to a client: an acknowledged row is
        never dropped, so a full buffer must be refused before anything is kept."""
        if not rows:
            return True
        with self._put_lock:
            if self._closed or len(self._rows) + len(rows) > self._max_rows:
                return False
            size = len(self._rows)
            self._rows.extend(rows)
        if size < self._flush_rows <= size + len(rows):
            self._wake.set()
        return True

    @property
    def capacity(self) -> int:
        """Most rows the buffer holds."""
        return self._max_rows

    def flush(self, timeout: float | None = None) -> bool:
        """Write every row buffered before this call; True when done within `timeout`."""
        with self._done:
            if self._exited:
                return True  # closed: everything was written then
            self._requested += 1
            generation = self._requested
        self._wake.set()
        with self._done:
            return self._done.wait_for(
                lambda: self._completed >= generation or self._exited, timeout
            )

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking rows, write everything buffered, stop the thread; idempotent.

        True when the thread finished within `timeout` (then nothing accepted was lost
        except rows whose write failed, counted in `stats.failed`).
        """
        with self._put_lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stats(self) -> WriterStats:
        return WriterStats(
            written=self._written,
            dropped_full=self._dropped_full,
            dropped_closed=self._dropped_closed,
            failed=self._failed + self._sink.lost_rows,
            files=self._files,
            buffered=len(self._rows),
            pending_upload_files=self._sink.pending_files,
            pending_upload_rows=self._sink.pending_rows,
        )

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        self._sink.settle()  # what earlier processes left in the outbox goes up first
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            closing = self._closed
            with self._done:
                generation = self._requested
            # Everything appended before `generation` was read is in the deque now.
            self._drain()
            self._sink.settle(final=closing)
            self._report_drops()
            with self._done:
                self._completed = generation
                self._done.notify_all()
            if closing:
                # close() set the flag under the put lock before it was read here, so the
                # drain above took the last row. Release any flush() still waiting.
                with self._done:
                    self._exited = True
                    self._done.notify_all()
                return

    def _drain(self) -> None:
        # Only the rows buffered now: rows that arrive while these are written wait for the
        # next wake-up. Draining "until empty" under steady traffic wrote a file for every
        # few dozen rows that came in during the previous write, each paying a file's fixed
        # cost (~2.5 ms of CPU), which made logging ~7x dearer per row than it should be.
        # At most flush_rows per file: bounded conversion memory, and progress under load.
        rows = self._rows
        left = len(rows)
        while left:
            take = min(left, self._flush_rows)
            self._write([rows.popleft() for _ in range(take)])
            left -= take

    def _write(self, batch: list[Row]) -> None:
        started = time.perf_counter()
        try:
            parts = list(self._to_parts(batch))
        except Exception:
            # One row that cannot be converted must not cost the rows beside it: find it
            # (row by row, only on this rare path) and write the others.
            good = [row for row in batch if self._convertible(row)]
            lost = len(batch) - len(good)
            log.exception(
                "%s writer: %d row(s) could not be converted and are lost (%d written)",
                self.name, lost, len(good),
            )  # fmt: skip
            self._failed += lost
            try:
                parts = list(self._to_parts(good)) if good else []
            except Exception:
                log.exception("%s writer: %d row(s) are lost", self.name, len(good))
                self._failed += len(good)
                return
        for directory, frame in parts:
            try:
                self._sink.write(directory, frame)
            except Exception as exc:
                self._failed += frame.height
                log.error(
                    "%s writer: could not write %d row(s) to %s: %s; they are lost "
                    "(check free space and permissions)",
                    self.name, frame.height, directory, exc,
                )  # fmt: skip
                continue
            self._written += frame.height
            self._files += 1
        log.debug(
            "%s writer: %d row(s) in %d file(s) in %.1f ms",
            self.name, len(batch), len(parts), 1e3 * (time.perf_counter() - started),
        )  # fmt: skip

    def _convertible(self, row: Row) -> bool:
        try:
            list(self._to_parts([row]))
        except Exception:
            return False
        return True

    def _report_drops(self) -> None:
        dropped = self._dropped_full + self._dropped_closed
        if dropped > self._reported_drops:
            log.warning(
                "%s writer dropped %d row(s) (%d in total): its buffer of %d rows was full; "
                "the disk is slower than the request rate, or raise the buffer size",
                self.name, dropped - self._reported_drops, dropped, self._max_rows,
            )  # fmt: skip
            self._reported_drops = dropped
