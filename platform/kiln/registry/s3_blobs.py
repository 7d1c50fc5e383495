"""`S3BlobStore`: artifact blobs in a bucket (``PREFIX/artifacts/sha256/ab/<sha256>``), with a
local verified cache.

Writing: the bytes are staged and hashed into the local cache first (a `LocalBlobStore` under
``KILN_HOME/cache/artifacts``: atomic, fsynced, read-only), then uploaded write-once
(``If-None-Match: *``) with their SHA-256 as S3's checksum, so the server refuses bytes damaged
on the way and keeps the checksum. A key that exists already holds the same bytes, unless
someone replaced them: its stored checksum is compared and a wrong object is replaced, which is
how importing a bundle repairs a damaged blob (as the local store does).

Reading (`verified_path`): the cached copy is re-hashed on every call, exactly as local blobs
are; a missing or damaged copy is downloaded again, hashed while it lands, and refused
(`ArtifactCorrupted`, naming the object) when the bucket's bytes are not the registered ones.
So a serving restart reads its engines from the cache without downloading them again, and no
byte is served that does not match the registry's sha256.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from kiln.errors import ArtifactCorrupted, ArtifactNotFound
from kiln.registry.blobs import LocalBlobStore, StoredBlob, TempFile, hash_file, is_sha256
from kiln.storage import S3Storage

log = logging.getLogger("kiln.registry")

_UPLOAD = "upload:"
# A multipart upload older than this was left by a writer that died (none takes a day).
_STALE_UPLOAD_S = 24 * 3600


class S3BlobStore:
    """Blobs in `storage`'s bucket; `cache_dir` holds verified local copies."""

    def __init__(self, storage: S3Storage, cache_dir: Path) -> None:
        self.storage = storage
        self.cache = LocalBlobStore(cache_dir)
        self._prefix = storage.location.key("artifacts", "sha256") + "/"

    @property
    def location(self) -> str:
        return self.storage.location.url("artifacts")

    def key(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return f"{self._prefix}{sha256[:2]}/{sha256}"

    def url(self, sha256: str) -> str:
        return f"s3://{self.storage.bucket}/{self.key(sha256)}"

    # -- writing ---------------------------------------------------------------------------

    def put_file(self, source: Path) -> StoredBlob:
        with source.open("rb") as stream:
            return self.put_stream(stream)

    def put_stream(self, stream: IO[bytes], *, expected_sha256: str | None = None) -> StoredBlob:
        blob = self.cache.put_stream(stream, expected_sha256=expected_sha256)
        self._upload(blob.sha256)
        return blob

    def _upload(self, sha256: str) -> None:
        key = self.key(sha256)
        path = self.cache.path(sha256)
        if self.storage.put_file_once(key, path, sha256=sha256):
            return
        if self._stored_sha256(key) == sha256:
            return
        # The key holds other bytes (or ones stored without a checksum, which cannot be told
        # apart without reading them): replace it with the bytes that hash to its name.
        if self._bucket_bytes_match(key, sha256):
            return
        log.warning("replacing %s: its bytes in the bucket do not hash to its name", key)
        self.storage.delete(key)
        self.storage.put_file_once(key, path, sha256=sha256)

    # -- reading ---------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        return self.storage.exists(self.key(sha256))

    def verified_path(self, sha256: str) -> Path:
        """A cached copy of the blob whose bytes hash to `sha256`, downloaded if needed.

        Raises `ArtifactNotFound` when the bucket has no such object and `ArtifactCorrupted`
        (naming the object, the expected and the actual hash) when its bytes differ.
        """
        try:
            return self.cache.verified_path(sha256)
        except ArtifactNotFound:
            pass
        except ArtifactCorrupted:
            log.warning("the cached copy of blob %s was damaged; downloading it again", sha256)
            self.cache.delete(sha256)
        temp = self.cache.temp_path()
        try:
            if not self.storage.download(self.key(sha256), temp):
                raise ArtifactNotFound(
                    f"artifact blob {self.url(sha256)} is missing from the bucket; re-import "
                    "the version (kiln models import FILE) or register it again"
                )
            actual = hash_file(temp)
            if actual != sha256:
                raise ArtifactCorrupted(
                    f"artifact blob {self.url(sha256)} is corrupted: expected sha256 {sha256}, "
                    f"got {actual}; it was modified in the bucket after it was stored. Restore "
                    "it from an export bundle (kiln models import FILE) or register the version "
                    "again"
                )
            return self.cache.adopt(temp, sha256)
        finally:
            temp.unlink(missing_ok=True)

    def stored(self) -> Iterator[StoredBlob]:
        for item in self.storage.objects(self._prefix):
            shard, _, name = item.key[len(self._prefix) :].partition("/")
            if is_sha256(name) and name.startswith(shard):
                yield StoredBlob(name, item.size)

    # -- housekeeping ----------------------------------------------------------------------

    def delete(self, sha256: str) -> bool:
        found = self.exists(sha256)
        if found:
            self.storage.delete(self.key(sha256))
        self.cache.delete(sha256)
        return found

    def stale_temp_files(self) -> list[TempFile]:
        """Unfinished multipart uploads a day old, and the cache's dead writers' files."""
        now = time.time()
        stale = [
            TempFile(f"{_UPLOAD}{upload.upload_id}:{upload.key}", 0)
            for upload in self.storage.pending_uploads(self._prefix)
            if now - upload.started.timestamp() > _STALE_UPLOAD_S
        ]
        return stale + self.cache.stale_temp_files()

    def delete_temp(self, name: str) -> None:
        if not name.startswith(_UPLOAD):
            self.cache.delete_temp(name)
            return
        from kiln.storage import PendingUpload

        upload_id, _, key = name[len(_UPLOAD) :].partition(":")
        self.storage.abort(PendingUpload(key, upload_id, datetime.now(UTC)))

    # -- internals -------------------------------------------------------------------------

    def _stored_sha256(self, key: str) -> str | None:
        head = self.storage.head(key) or {}
        value = head.get("ChecksumSHA256")
        if not value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        return base64.b64decode(value).hex()

    def _bucket_bytes_match(self, key: str, sha256: str) -> bool:
        temp = self.cache.temp_path()
        try:
            return self.storage.download(key, temp) and hash_file(temp) == sha256
        finally:
            temp.unlink(missing_ok=True)
