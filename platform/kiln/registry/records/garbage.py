"""Records of what `gc` removed or would remove."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GcEntry:
    """One thing `gc` removed, or would remove."""

    kind: str
    """``blob`` (an artifact no version references) or ``temp_file`` (a dead writer's)."""
    name: str
    """The blob's sha256, or the temporary file's name."""
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "bytes": self.bytes}


@dataclass(frozen=True, slots=True)
class GcReport:
    """What `gc` removed and kept; with `dry_run`, what it would remove (nothing was)."""

    entries: tuple[GcEntry, ...]
    kept_blobs: int
    dry_run: bool = False
    confirmation: str | None = None
    """Why a real run would need ``force`` (``--yes``), or None when it would not."""

    @property
    def removed_blobs(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries if e.kind == "blob")

    @property
    def removed_temp_files(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries if e.kind == "temp_file")

    @property
    def freed_bytes(self) -> int:
        return sum(e.bytes for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed_blobs": list(self.removed_blobs),
            "removed_temp_files": list(self.removed_temp_files),
            "freed_bytes": self.freed_bytes,
            "kept_blobs": self.kept_blobs,
            "entries": [e.to_dict() for e in self.entries],
            "confirmation_needed": self.confirmation,
        }
