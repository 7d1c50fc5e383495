"""How a writer's part files reach their store: `LocalSink` (KILN_HOME) or `Outbox` (S3).

A part file bound for a bucket is written first into a local outbox,
``KILN_HOME/outbox/<bucket>/<prefix>/traffic/model=…/date=…/part-….parquet`` (atomically and
with its CRC-32 in its name, as a local part file), then uploaded write-once to the key of
the same relative path, with that CRC-32 as the object's S3 checksum: the server refuses
bytes that do not match, and keeps the value for readers. Only then is the local copy
deleted. So a row that reached the outbox is never lost:

- the bucket is down or refuses the credentials: the file stays; the failure is logged once
  per outage; the writer retries at each of its flushes (oldest first, stopping at the first
  failure so that an outage costs one attempt per flush, not one per file);
- the process dies: the file stays; the next writer of the same stream started with this
  KILN_HOME and bucket uploads it when it starts (names are unique, writes are write-once, so
  two processes uploading the same leftover store it once);
- `close()` tries once more and, when the bucket is still down, logs where the files wait.

The outbox is keyed by bucket and prefix so that leftovers go where they were meant to,
even when KILN_STORAGE_URL changed since.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import polars as pl

from kiln.errors import StorageAccessDenied, StorageUnavailable
from kiln.traffic.checksums import file_crc, name_crc
from kiln.traffic.layout import PART_GLOB, remove_stale_temporaries, write_part

if TYPE_CHECKING:
    from kiln.storage import S3Storage

log = logging.getLogger("kiln.traffic")

DAMAGED_SUFFIX = ".damaged"
"""Appended to an outbox file whose bytes no longer match its name: kept for a look, never
uploaded."""


class PartSink(Protocol):
    """Where a writer's part files go."""

    def write(self, directory: Path, frame: pl.DataFrame) -> Path:
        """Write `frame` as a new part file in `directory` (below the store's `write_root`);
        raises the OS's error when it cannot. Once this returns, the rows are kept."""

    def settle(self, *, final: bool = False) -> None:
        """Move what waits to the store (a no-op locally); never raises. `final`: the writer
        is closing, so report what is left behind."""

    def store_now(self, directory: Path, frame: pl.DataFrame) -> str:
        """Write `frame` and get it into the store before returning its path or URL; raises
        (`StorageUnavailable`, `StorageAccessDenied`, `OSError`) and keeps nothing when it
        cannot."""

    @property
    def pending_files(self) -> int:
        """Part files written but not yet in the store."""

    @property
    def pending_rows(self) -> int:
        """Rows in those files."""

    @property
    def lost_rows(self) -> int:
        """Rows of files found damaged before they could be uploaded."""


class LocalSink:
    """Part files written in place under KILN_HOME: nothing ever waits."""

    pending_files = 0
    pending_rows = 0
    lost_rows = 0

    def write(self, directory: Path, frame: pl.DataFrame) -> Path:
        return write_part(directory, frame)

    def settle(self, *, final: bool = False) -> None:
        return None

    def store_now(self, directory: Path, frame: pl.DataFrame) -> str:
        return str(write_part(directory, frame))


@dataclass(frozen=True, slots=True)
class _Waiting:
    path: Path
    rows: int


class Outbox:
    """Part files of one stream written under `root` (the outbox) and uploaded to `storage`
    at the key of their path relative to `root`. Adopts the leftovers of earlier processes."""

    def __init__(self, storage: S3Storage, root: Path, stream: str) -> None:
        self.storage = storage
        self.root = root
        self.stream = stream
        self._lock = threading.Lock()  # settle() runs on the writer thread, store_now elsewhere
        self._waiting: list[_Waiting] = []
        self._down = False
        self._lost = 0
        remove_stale_temporaries(root / stream)
        leftovers = sorted((root / stream).rglob(PART_GLOB)) if (root / stream).is_dir() else []
        self._waiting.extend(_Waiting(p, _row_count(p)) for p in leftovers)
        if leftovers:
            log.info(
                "%s outbox: %d part file(s) with %d row(s) left by an earlier writer under %s "
                "will be uploaded to %s",
                stream, len(leftovers), self.pending_rows, root / stream,
                storage.location.url(stream),
            )  # fmt: skip

    def __repr__(self) -> str:
        target = self.storage.location.url(self.stream)
        return f"Outbox({str(self.root / self.stream)!r} -> {target!r})"

    @property
    def pending_files(self) -> int:
        return len(self._waiting)

    @property
    def pending_rows(self) -> int:
        return sum(w.rows for w in self._waiting)

    @property
    def lost_rows(self) -> int:
        return self._lost

    def write(self, directory: Path, frame: pl.DataFrame) -> Path:
        path = write_part(directory, frame)
        with self._lock:
            self._waiting.append(_Waiting(path, frame.height))
        return path

    def settle(self, *, final: bool = False) -> None:
        with self._lock:
            while self._waiting:
                item = self._waiting[0]
                try:
                    self._upload(item.path)
                except (StorageUnavailable, StorageAccessDenied, OSError) as exc:
                    self._report_down(exc)
                    break
                self._waiting.pop(0)
                if self._down:
                    self._down = False
                    log.warning(
                        "%s outbox: uploading to %s works again; %d part file(s) still wait",
                        self.stream, self.storage.location, len(self._waiting),
                    )  # fmt: skip
            if final and self._waiting:
                log.error(
                    "%s outbox: %d part file(s) with %d row(s) could not be uploaded to %s and "
                    "wait under %s; the next Kiln writer started with this KILN_HOME and "
                    "KILN_STORAGE_URL uploads them",
                    self.stream, len(self._waiting), self.pending_rows, self.storage.location,
                    self.root / self.stream,
                )  # fmt: skip

    def store_now(self, directory: Path, frame: pl.DataFrame) -> str:
        path = write_part(directory, frame)
        try:
            with self._lock:
                return self._upload(path)
        finally:
            path.unlink(missing_ok=True)

    def key(self, path: Path) -> str:
        return self.storage.location.key(path.relative_to(self.root).as_posix())

    def _upload(self, path: Path) -> str:
        """Upload one outbox file and delete it; returns its URL. A file another process
        uploaded (and deleted) first counts as done; one whose bytes no longer match its
        name is set aside (`DAMAGED_SUFFIX`) and its rows counted as lost."""
        key = self.key(path)
        url = f"s3://{self.storage.bucket}/{key}"
        crc = name_crc(path.name)
        try:
            found = file_crc(path)
        except FileNotFoundError:  # a sibling process uploaded this leftover first
            return url
        if crc is not None and found != crc:
            rows = _row_count(path)
            self._lost += rows
            path.rename(path.with_name(path.name + DAMAGED_SUFFIX))
            log.error(
                "%s outbox: %s was damaged on this disk before it could be uploaded (CRC-32 "
                "%08x, its name says %08x); its %d row(s) are lost, the file is kept as %s",
                self.stream, path, found, crc, rows, path.name + DAMAGED_SUFFIX,
            )  # fmt: skip
            return url
        created = self.storage.put_file_once(key, path, crc32=found)
        if not created:
            # Names are unique: the key exists because this very file was uploaded before
            # (by a process that died before deleting it, or by a sibling just now).
            log.debug("%s outbox: %s was already uploaded", self.stream, url)
        path.unlink(missing_ok=True)
        return url

    def _report_down(self, exc: Exception) -> None:
        if self._down:
            log.debug("%s outbox: upload still failing: %s", self.stream, exc)
            return
        self._down = True
        log.error(
            "%s outbox: cannot upload to %s: %s; %d part file(s) with %d row(s) wait under %s "
            "and are retried at every flush",
            self.stream, self.storage.location, exc, len(self._waiting), self.pending_rows,
            self.root / self.stream,
        )  # fmt: skip


def _row_count(path: Path) -> int:
    """Rows of a part file, from its footer; 0 when it cannot be read."""
    try:
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError):
        return 0
