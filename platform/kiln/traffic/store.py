"""Where the traffic and feedback part files are kept: a `LogStore`.

The layout is the same wherever they are, relative to a root: ``traffic/model=NAME/
date=YYYY-MM-DD/part-….parquet`` and ``feedback/date=YYYY-MM-DD/part-….parquet``.

- `LocalLogStore`: the root is `KILN_HOME` (the embedded default; files written atomically).
- `S3LogStore` (`kiln.traffic.s3_store`): the root is `KILN_STORAGE_URL`'s bucket and prefix.
  Writers put each part file into a local outbox first and upload it from there
  (`kiln.traffic.outbox`); readers list, verify and scan the objects over ``s3://``.

`log_store(settings)` picks one from Kiln's settings; every reader and writer also takes a
plain KILN_HOME `Path`, which means local files (what callers and tests did before).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from kiln.settings import Settings
from kiln.traffic.checksums import FileCheck, verify_file
from kiln.traffic.layout import model_of_dir, part_files
from kiln.traffic.outbox import LocalSink, PartSink

PartFile = Path | str
"""One part file as a reader sees it: a local path, or an ``s3://`` URL."""

Footer = pl.Schema | str
"""A part file's schema from its footer, or why it could not be read."""


class LogStore(ABC):
    """The part files of the traffic log and the feedback store, below one root."""

    home: Path
    """KILN_HOME: the local root, or the outbox's parent for a bucket."""

    @property
    @abstractmethod
    def write_root(self) -> Path:
        """The local directory writers write part files under (`layout`'s relative paths)."""

    @abstractmethod
    def where(self, *parts: str) -> str:
        """The path or ``s3://`` URL of `parts` below the root, for messages."""

    @abstractmethod
    def models(self) -> list[str]:
        """Models that have logged traffic, sorted."""

    @abstractmethod
    def has_model(self, model: str, relative: str) -> bool:
        """Whether `model`'s traffic directory (`relative` to the root) holds anything."""

    @abstractmethod
    def parts(self, relative: str, first: date | None, last: date | None) -> list[PartFile]:
        """Part files below `relative`'s ``date=`` partitions, pruned to ``first..last``."""

    @abstractmethod
    def footers(self, parts: Sequence[PartFile]) -> list[Footer]:
        """Each part's schema (or why it is unreadable), reading footers only."""

    @abstractmethod
    def checks(self, parts: Sequence[PartFile]) -> list[FileCheck]:
        """Whether each part's bytes still match the CRC-32 its name carries."""

    @abstractmethod
    def scan(self, parts: Sequence[PartFile], **options: Any) -> pl.LazyFrame:
        """`pl.scan_parquet` over `parts` (at least one), with `options`."""

    @abstractmethod
    def read(self, part: PartFile) -> pl.DataFrame:
        """One part read in full (raises Polars' or the OS's error when it is damaged)."""

    @abstractmethod
    def sink(self, stream: str) -> PartSink:
        """What a writer of `stream` ("traffic" or "feedback") writes its part files through."""

    def scrub(self, text: str) -> str:
        """`text` (an error's message) safe to log: without credentials."""
        return text


class LocalLogStore(LogStore):
    """Part files under `home` (KILN_HOME), as Kiln has always kept them."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __repr__(self) -> str:
        return f"LocalLogStore({str(self.home)!r})"

    @property
    def write_root(self) -> Path:
        return self.home

    def where(self, *parts: str) -> str:
        return str(self.home.joinpath(*parts))

    def models(self) -> list[str]:
        root = self.home / "traffic"
        if not root.is_dir():
            return []
        found = (model_of_dir(d) for d in root.iterdir() if d.is_dir())
        return sorted(m for m in found if m is not None)

    def has_model(self, model: str, relative: str) -> bool:
        return (self.home / relative).is_dir()

    def parts(self, relative: str, first: date | None, last: date | None) -> list[PartFile]:
        return list(part_files(self.home / relative, first, last))

    def footers(self, parts: Sequence[PartFile]) -> list[Footer]:
        found: list[Footer] = []
        for part in parts:
            try:
                found.append(pl.Schema(pl.read_parquet_schema(part)))
            except (pl.exceptions.PolarsError, OSError) as exc:
                found.append(f"{type(exc).__name__}: {exc}")
        return found

    def checks(self, parts: Sequence[PartFile]) -> list[FileCheck]:
        return [_local_check(Path(p)) for p in parts]

    def scan(self, parts: Sequence[PartFile], **options: Any) -> pl.LazyFrame:
        return pl.scan_parquet([Path(p) for p in parts], **options)

    def read(self, part: PartFile) -> pl.DataFrame:
        return pl.read_parquet(part)

    def sink(self, stream: str) -> PartSink:
        return LocalSink()


LogRoot = Path | LogStore
"""What readers and writers take: a `LogStore`, or a KILN_HOME path (local files)."""


def as_store(root: LogRoot) -> LogStore:
    """`root` as a `LogStore` (a path is a `LocalLogStore` over it)."""
    return root if isinstance(root, LogStore) else LocalLogStore(root)


def log_store(settings: Settings) -> LogStore:
    """The store `settings` name: the bucket of `KILN_STORAGE_URL`, else files under KILN_HOME.

    Raises `InvalidArgument` for a URL Kiln cannot use, `Unavailable` when boto3 is missing.
    Nothing is contacted until the store is used.
    """
    from kiln.storage import open_storage

    storage = open_storage(settings)
    if storage is None:
        return LocalLogStore(settings.home)
    from kiln.traffic.s3_store import S3LogStore

    return S3LogStore(settings.home, storage)


def _local_check(path: Path) -> FileCheck:
    try:
        stat = path.stat()
        return _cached_check(str(path), stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        return FileCheck(checked=False, problem=f"cannot be read ({exc.strerror or exc})")


@lru_cache(maxsize=65_536)
def _cached_check(path: str, size: int, mtime_ns: int) -> FileCheck:
    """`verify_file` of a file as it is (`size`, `mtime_ns`): part files never change once
    written, so each is checked once per process (a command scans the same log twice)."""
    return verify_file(Path(path))


__all__ = [
    "Footer",
    "LocalLogStore",
    "LogRoot",
    "LogStore",
    "PartFile",
    "as_store",
    "log_store",
]
