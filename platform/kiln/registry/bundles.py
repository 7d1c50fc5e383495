"""Export bundles: one version, self-contained, to move between registries.

A bundle is a tar archive (gzip-compressed when its name ends in ``.gz`` or ``.tgz``)::

    manifest.json        format, source reference, the version record, its artifact records
    blobs/<sha256>       each artifact's bytes, once per hash

Reading never extracts paths from the archive: it looks up the members the manifest names,
so a hostile archive cannot write outside the blob store, and every blob is re-hashed on
the way in. The manifest itself is bounded (`MAX_MANIFEST_BYTES`, `MAX_MANIFEST_DEPTH`
levels of nesting) and its numbers are checked against what the registry can store
(versions 1 to 2**63 - 1), so a hostile manifest is `BundleInvalid`, never an overflow.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kiln.errors import BundleInvalid
from kiln.registry.blobs import is_sha256
from kiln.registry.records import Artifact, ArtifactKind, Lineage, ModelVersion
from kiln.registry.references import MAX_VERSION, validate_name

FORMAT = "kiln-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# What Kiln writes is a few KB and a handful of levels deep (a data profile in the config);
# these bounds only stop a manifest built to exhaust memory or the parser's stack.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_DEPTH = 64
_MAX_SIZE = 2**63 - 1  # bytes a database BIGINT holds


@dataclass(frozen=True, slots=True)
class BundleManifest:
    source_ref: str
    version: ModelVersion
    artifacts: tuple[Artifact, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source_ref": self.source_ref,
            "version": self.version.to_dict(),
            "artifacts": [a.to_dict() for a in self.artifacts],
        }


def write_bundle(file: Path, manifest: BundleManifest, blobs: Sequence[tuple[str, Path]]) -> None:
    """Write the bundle to `file` atomically (a partial file never carries the final name)."""
    compressed = file.name.endswith((".gz", ".tgz"))
    partial = file.with_name(f".{file.name}.{secrets.token_hex(4)}.partial")
    try:
        with tarfile.open(partial, "w:gz" if compressed else "w") as tar:
            body = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
            tar.addfile(_member(MANIFEST, len(body)), io.BytesIO(body))
            for sha256, path in blobs:
                with path.open("rb") as stream:
                    tar.addfile(_member(f"blobs/{sha256}", path.stat().st_size), stream)
        with partial.open("rb") as done:
            os.fsync(done.fileno())
        os.replace(partial, file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextmanager
def read_bundle(file: Path) -> Iterator[tuple[BundleManifest, BundleBlobs]]:
    """Open a bundle: its manifest and a way to read each blob it lists.

    Raises `BundleInvalid` for a missing, foreign, truncated or malformed file.
    """
    if not file.is_file():
        raise BundleInvalid(f"no bundle file {file}; create one with kiln models export REF FILE")
    with _open_archive(file) as tar:
        try:
            members = {m.name: m for m in tar.getmembers()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise _truncated(file, exc) from None
        if MANIFEST not in members or not members[MANIFEST].isfile():
            raise BundleInvalid(
                f"{file} is not a Kiln bundle: it has no {MANIFEST}; "
                "create one with kiln models export REF FILE"
            )
        if members[MANIFEST].size > MAX_MANIFEST_BYTES:
            raise BundleInvalid(
                f"{file} has a malformed {MANIFEST}: it is {members[MANIFEST].size} bytes, "
                f"more than a manifest may have ({MAX_MANIFEST_BYTES}); export the version again"
            )
        manifest = _parse_manifest(file, _read_member(tar, file, members[MANIFEST]))
        yield manifest, BundleBlobs(file, tar, members)


class BundleBlobs:
    """The blobs inside an open bundle."""

    def __init__(self, file: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]):
        self._file = file
        self._tar = tar
        self._members = members

    @contextmanager
    def open(self, sha256: str, size: int) -> Iterator[IO[bytes]]:
        member = self._members.get(f"blobs/{sha256}")
        if member is None or not member.isfile():
            raise BundleInvalid(
                f"{self._file} is truncated or incomplete: blob {sha256} listed in its "
                "manifest is missing; export the version again"
            )
        if member.size != size:
            raise BundleInvalid(
                f"{self._file} is damaged: blob {sha256} has {member.size} bytes, "
                f"its manifest says {size}; export the version again"
            )
        stream = self._tar.extractfile(member)
        if stream is None:
            raise BundleInvalid(f"{self._file}: blob {sha256} is not a regular file")
        try:
            yield stream
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _truncated(self._file, exc) from None


def _open_archive(file: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(file, "r:*")
    except (tarfile.TarError, OSError, EOFError):
        raise BundleInvalid(
            f"{file} is not a Kiln bundle (not a tar archive); "
            "create one with kiln models export REF FILE"
        ) from None


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(time.time())
    info.mode = 0o644
    return info


def _read_member(tar: tarfile.TarFile, file: Path, member: tarfile.TarInfo) -> bytes:
    stream = tar.extractfile(member)
    if stream is None:
        raise BundleInvalid(f"{file}: {member.name} is not a regular file")
    try:
        data = stream.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _truncated(file, exc) from None
    if len(data) != member.size:
        raise _truncated(file, EOFError(f"{member.name} is cut short"))
    return data


def _truncated(file: Path, exc: BaseException) -> BundleInvalid:
    return BundleInvalid(
        f"{file} is truncated or damaged ({exc}); copy it again or export the version again"
    )


def _parse_manifest(file: Path, body: bytes) -> BundleManifest:
    def bad(why: str) -> BundleInvalid:
        return BundleInvalid(f"{file} has a malformed {MANIFEST}: {why}")

    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not JSON ({exc})") from None
    except ValueError:  # json parses numbers with int(), which refuses 4,300+ digits
        raise bad("it holds a number with more than 4,300 digits") from None
    except RecursionError:
        raise bad(f"it is nested more than {MAX_MANIFEST_DEPTH} levels deep") from None
    if _depth(data) > MAX_MANIFEST_DEPTH:
        raise bad(f"it is nested more than {MAX_MANIFEST_DEPTH} levels deep")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleInvalid(
            f"{file} is not a Kiln bundle ({MANIFEST} has no format '{FORMAT}'); "
            "create one with kiln models export REF FILE"
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleInvalid(
            f"{file} is a Kiln bundle of format version {data.get('format_version')}; this "
            f"Kiln reads version {FORMAT_VERSION}: upgrade kiln"
        )
    try:
        v = data["version"]
        name = validate_name(str(v["name"]))
        number = _integer(v["version"], "version.version", 1, MAX_VERSION)
        lineage = dict(v.get("lineage") or {})
        if lineage.get("parent_version") is not None:
            _integer(lineage["parent_version"], "version.lineage.parent_version", 1, MAX_VERSION)
        version = ModelVersion.create(
            name,
            number,
            config=dict(v["config"]),
            metrics=dict(v["metrics"]),
            lineage=Lineage.from_dict(lineage),
            description=str(v.get("description", "")),
            created_at=_time(v["created_at"], "version.created_at"),
        )
        artifacts = []
        for a in data["artifacts"]:
            if not is_sha256(str(a["sha256"])):
                raise ValueError(f"artifact sha256 {a['sha256']!r} is not a hex digest")
            artifacts.append(
                Artifact(
                    name=name,
                    version=number,
                    kind=ArtifactKind(a["kind"]),
                    sha256=str(a["sha256"]),
                    size=_integer(a["size"], "artifacts[].size", 0, _MAX_SIZE),
                    filename=str(a.get("filename", "")),
                    target=dict(a.get("target") or {}),
                    libraries=dict(a.get("libraries") or {}),
                    report=dict(a.get("report") or {}),
                    created_at=_time(a["created_at"], "artifacts[].created_at"),
                )
            )
        source_ref = str(data.get("source_ref", version.ref))
    except _Unusable as exc:
        raise bad(str(exc)) from None
    except KeyError as exc:
        raise bad(f"it has no field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}"[:300]) from None
    return BundleManifest(source_ref=source_ref, version=version, artifacts=tuple(artifacts))


class _Unusable(ValueError):
    """A manifest value outside what the registry can store."""


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unusable(f"{field} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        shown = str(value) if value.bit_length() < 100 else f"a {value.bit_length()}-bit number"
        raise _Unusable(f"{field} is {shown}, outside {low} to {high}")
    return value


def _time(value: Any, field: str) -> datetime:
    """An ISO 8601 time with a timezone that the registry can store (years 1-9999 in UTC)."""
    when = datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        raise _Unusable(f"{field} {str(value)[:40]!r}: timestamps must carry a timezone")
    try:
        when.astimezone(UTC)
    except OverflowError:
        raise _Unusable(
            f"{field} {str(value)[:40]!r} is outside the years 1 to 9999 in UTC"
        ) from None
    return when


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and objects (iteratively: it may be deep)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_MANIFEST_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest
