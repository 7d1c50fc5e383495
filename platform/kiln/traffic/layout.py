"""Where traffic and feedback files live, and how a part file appears atomically.

``ROOT/traffic/model=NAME/date=YYYY-MM-DD/part-<utc stamp>-<uuid>.parquet`` and
``ROOT/feedback/date=YYYY-MM-DD/part-….parquet``. A part file is written under a hidden
temporary name in the same directory, synced, then renamed to a name that carries the CRC-32
of its bytes (`checksums`): readers (which list only ``part-*.parquet``) see a whole file or
nothing, whatever happens to the writer, and find any later damage.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote, unquote

import polars as pl

from kiln.traffic.checksums import file_crc, with_sum

log = logging.getLogger("kiln.traffic")

PART_GLOB = "part-*.parquet"
TEMP_PREFIX = ".part-"
TEMP_SUFFIX = ".parquet.tmp"
STALE_TEMP_S = 3600.0
"""A temporary file older than this was left by a writer that died; a newer one may be live."""


def traffic_root(home: Path) -> Path:
    return home / "traffic"


def feedback_root(home: Path) -> Path:
    return home / "feedback"


def model_dir(traffic: Path, model: str) -> Path:
    # Percent-encode so that no model name can climb out of its directory ('..', '/').
    return traffic / f"model={quote(model, safe='')}"


def model_of_dir(path: Path) -> str | None:
    key, sep, value = path.name.partition("=")
    return unquote(value) if sep and key == "model" else None


def date_of_dir(path: Path) -> date | None:
    key, sep, value = path.name.partition("=")
    if not sep or key != "date":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def part_files(parent: Path, first: date | None = None, last: date | None = None) -> list[Path]:
    """Part files under `parent`'s ``date=`` directories, pruned to ``first..last`` by name.

    Pruning by directory name is the partition pushdown: dates outside the window are never
    opened. Directories whose names are not dates are ignored.
    """
    if not parent.is_dir():
        return []
    files: list[Path] = []
    for sub in sorted(parent.iterdir()):
        day = date_of_dir(sub)
        if day is None or not sub.is_dir():
            continue
        if (first is not None and day < first) or (last is not None and day > last):
            continue
        files.extend(sorted(sub.glob(PART_GLOB)))
    return files


def part_name(now_ns: int | None = None) -> str:
    stamp = datetime.fromtimestamp((now_ns or time.time_ns()) / 1e9, UTC)
    return f"part-{stamp:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}.parquet"


def write_part(directory: Path, frame: pl.DataFrame) -> Path:
    """Write `frame` as a new part file in `directory`, atomically; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / part_name()
    temp = directory / f"{TEMP_PREFIX}{final.stem.removeprefix('part-')}{TEMP_SUFFIX}"
    try:
        # zstd level 1: a third less CPU than the default level for files ~10% larger;
        # writing happens on the serving host, reading is rarer.
        frame.write_parquet(temp, compression="zstd", compression_level=1, statistics=True)
        # The rename is atomic only for data that reached the file; sync it first so that a
        # crash of the machine (not just the process) cannot leave a renamed, empty file.
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # The name carries the sum of the bytes it is given to (`checksums`).
        final = directory / with_sum(final.name, file_crc(temp))
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


def remove_stale_temporaries(root: Path, older_than_s: float = STALE_TEMP_S) -> int:
    """Delete temporary part files a killed writer left behind; returns how many."""
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for temp in root.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
                removed += 1
        except FileNotFoundError:  # another process removed or renamed it first
            continue
    if removed:
        log.info(
            "removed %d temporary traffic file(s) left by killed writers under %s", removed, root
        )
    return removed
