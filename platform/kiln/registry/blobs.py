"""Content-addressed artifact files: ``ROOT/sha256/ab/abcdef…``, behind the `BlobStore` protocol.

`LocalBlobStore` keeps them under a directory (KILN_HOME/artifacts, the embedded default);
`kiln.registry.s3_blobs.S3BlobStore` keeps them in a bucket with a local verified cache.

A blob is written to a temporary name in its final directory, fsynced, made read-only and
renamed into place, so a reader sees either nothing or the whole file, even if the writer is
killed. Temporary names carry the writer's host and pid, which lets `collect` tell a live
writer's file from one a dead process left behind.

Blobs are only ever added here; deciding which ones are garbage is the registry's job (it
knows which hashes its rows reference) and it must hold the database write lock while it
collects, so that a registration cannot commit a reference to a blob being deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from kiln.errors import ArtifactCorrupted, ArtifactNotFound
from kiln.processes import pid_alive

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMP_PREFIX = ".tmp-"
# A temporary file from another host cannot be checked for a live writer; past this age it
# is assumed abandoned (no single artifact takes a day to write).
_FOREIGN_TEMP_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class StoredBlob:
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class TempFile:
    """What a killed writer left behind: a staging file, or an unfinished upload."""

    name: str
    size: int


def is_sha256(text: str) -> bool:
    return bool(_SHA256.fullmatch(text))


class BlobStore(Protocol):
    """Where a registry keeps artifact bytes, addressed by their sha256.

    Blobs are only ever added by `put_*`; `delete` is for `gc`, which decides (under the
    database write lock) that no row references a blob.
    """

    @property
    def location(self) -> str:
        """Where the blobs are, as users write it (a directory, or s3://bucket/prefix/...)."""
        ...

    def put_file(self, source: Path) -> StoredBlob: ...

    def put_stream(
        self, stream: IO[bytes], *, expected_sha256: str | None = None
    ) -> StoredBlob: ...

    def exists(self, sha256: str) -> bool: ...

    def verified_path(self, sha256: str) -> Path:
        """A local file holding the blob's bytes, checked against `sha256` on this call."""
        ...

    def stored(self) -> Iterator[StoredBlob]: ...

    def delete(self, sha256: str) -> bool:
        """Remove the blob; False when it was already gone."""
        ...

    def stale_temp_files(self) -> list[TempFile]: ...

    def delete_temp(self, name: str) -> None: ...


class LocalBlobStore:
    """Files addressed by the sha256 of their bytes, under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._host = socket.gethostname().replace("-", "_") or "localhost"

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, sha256: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists)."""
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def put_file(self, source: Path) -> StoredBlob:
        """Copy `source` in; return its hash and size."""
        with source.open("rb") as stream:
            return self.put_stream(stream)

    def put_stream(self, stream: IO[bytes], *, expected_sha256: str | None = None) -> StoredBlob:
        """Copy `stream` in, hashing on the way; return its hash and size.

        With `expected_sha256`, bytes that hash differently are discarded and
        `ArtifactCorrupted` is raised (nothing is stored).
        """
        temp = self.temp_path()
        digest = hashlib.sha256()
        size = 0
        try:
            with temp.open("xb") as out:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise ArtifactCorrupted(
                    f"incoming artifact bytes hash to {sha256}, expected {expected_sha256}; "
                    "the source is damaged, nothing was stored"
                )
            # Rename within one file system: atomic. An existing blob with the same hash is
            # replaced by identical bytes, which also repairs one damaged on disk.
            self.adopt(temp, sha256)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StoredBlob(sha256=sha256, size=size)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def verified_path(self, sha256: str) -> Path:
        """The blob's path, after checking that its bytes still hash to `sha256`.

        Raises `ArtifactNotFound` when the file is gone and `ArtifactCorrupted` (naming the
        file, the expected and the actual hash) when it was modified.
        """
        path = self.path(sha256)
        try:
            actual = hash_file(path)
        except FileNotFoundError:
            raise ArtifactNotFound(
                f"artifact blob {path} is missing; re-import the version "
                "(kiln models import FILE) or register it again"
            ) from None
        if actual != sha256:
            raise ArtifactCorrupted(
                f"artifact blob {path} is corrupted: expected sha256 {sha256}, got {actual}; "
                "it was modified after it was stored. Restore it from an export bundle "
                "(kiln models import FILE) or register the version again"
            )
        return path

    def stored(self) -> Iterator[StoredBlob]:
        """Every blob present, with its size."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for shard in sorted(base.iterdir()):
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                if is_sha256(path.name) and path.name.startswith(shard.name):
                    try:
                        yield StoredBlob(path.name, path.stat().st_size)
                    except FileNotFoundError:  # deleted since the listing
                        continue

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def stale_temp_files(self) -> list[TempFile]:
        """Temporary files whose writer is gone: dead pid on this host, or a day old."""
        staging = self.root / "sha256" / "incoming"
        if not staging.is_dir():
            return []
        now = time.time()
        stale = []
        for path in staging.iterdir():
            if not path.name.startswith(_TEMP_PREFIX):
                continue
            host, pid = _writer_of(path.name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # its writer just renamed it into place
            age = now - stat.st_mtime
            if age > _FOREIGN_TEMP_MAX_AGE_S or (host == self._host and not pid_alive(pid)):
                stale.append(TempFile(path.name, stat.st_size))
        return stale

    def delete_temp(self, name: str) -> None:
        if not name.startswith(_TEMP_PREFIX) or "/" in name:
            raise ValueError(f"not a temporary blob file name: {name!r}")
        (self.root / "sha256" / "incoming" / name).unlink(missing_ok=True)

    def temp_path(self) -> Path:
        """A new staging file name (not created) in this store, which `stale_temp_files`
        attributes to this process: bytes go there first, then are renamed into place."""
        staging = self.root / "sha256" / "incoming"
        staging.mkdir(parents=True, exist_ok=True)
        return staging / f"{_TEMP_PREFIX}{self._host}-{os.getpid()}-{secrets.token_hex(8)}"

    def adopt(self, temp: Path, sha256: str) -> Path:
        """Move a staged file whose bytes hash to `sha256` into place (read-only); its path."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(temp, 0o444)
        os.replace(temp, final)
        fsync_dir(final.parent)
        return final


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _writer_of(name: str) -> tuple[str, int]:
    host, _, rest = name[len(_TEMP_PREFIX) :].partition("-")
    pid, _, _token = rest.partition("-")
    return host, int(pid) if pid.isdigit() else -1


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in `directory` survive a crash of the machine."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
