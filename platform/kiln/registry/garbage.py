"""Garbage collection: artifact blobs no row references, and temporary files of dead writers.

`collect` runs inside a `Database` write transaction (`Registry.gc` owns it and checks the
database's integrity first), so a registration in flight either commits its reference
before the blobs are listed (its blob is kept) or finds its blob gone and stores it again.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from kiln.errors import GcRefused
from kiln.registry import queries as q
from kiln.registry.blobs import BlobStore
from kiln.registry.records import GcEntry, GcReport


def collect(conn: Connection, blobs: BlobStore, *, dry_run: bool, force: bool) -> GcReport:
    """Remove what no artifact row references (nothing with `dry_run`); report it.

    Raises `GcRefused`, removing nothing, when more than half of the stored blobs would go
    and neither `dry_run` nor `force` is set (see `confirmation`).
    """
    referenced = q.referenced_blobs(conn)
    stored = list(blobs.stored())
    doomed = [GcEntry("blob", b.sha256, b.size) for b in stored if b.sha256 not in referenced]
    needed = confirmation(len(doomed), len(stored), doomed)
    if needed is not None and not (dry_run or force):
        raise GcRefused(
            f"kiln gc refused: {needed}; nothing was deleted. Check the registry "
            "first (kiln models list); kiln gc --dry-run lists the blobs, "
            "kiln gc --yes deletes them"
        )
    temps = [GcEntry("temp_file", t.name, t.size) for t in blobs.stale_temp_files()]
    report = GcReport(tuple(doomed + temps), len(stored) - len(doomed), dry_run, needed)
    if dry_run:
        return report
    removed = [entry for entry in doomed if blobs.delete(entry.name)]
    for entry in temps:
        blobs.delete_temp(entry.name)
    return GcReport(tuple(removed + temps), report.kept_blobs, False, needed)


def confirmation(doomed: int, stored: int, entries: list[GcEntry]) -> str | None:
    """Why deleting `doomed` of `stored` blobs needs confirmation, or None when it does not.

    The rule: more than half of the stored blobs (so one orphan beside one kept blob, the
    trace of a killed registration, needs none; every blob of a registry does).
    """
    if doomed * 2 <= stored:
        return None
    freed = sum(e.bytes for e in entries)
    if doomed == stored:
        return (
            f"the registry references none of the {stored} stored artifact blobs ({freed} "
            "bytes), which is what a replaced, restored or re-created registry database "
            "looks like"
        )
    return (
        f"it would delete {doomed} of the {stored} stored artifact blobs ({freed} bytes), "
        "more than half, which kiln gc does only when confirmed"
    )
