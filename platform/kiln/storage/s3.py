"""`S3Storage`: the few S3 operations Kiln needs, with failures turned into Kiln's errors.

Every call goes through `_translated`, so a caller sees `StorageUnavailable` (endpoint
unreachable or timing out, no such bucket, the server failing after the retries) or
`StorageAccessDenied` (credentials refused or lacking a permission), each naming the endpoint
and bucket and saying what to check, never the secret. Timeouts and attempts come from
`Settings`, so an unreachable endpoint fails in seconds instead of hanging.

Writes are write-once: `put_file_once` sends ``If-None-Match: *`` (on the single PUT, or on
the multipart upload's completion for large files) and reports whether the key was new; a
checksum sent with the bytes (CRC-32 or SHA-256, S3's additional checksums) makes the server
refuse bytes damaged in transit and keeps the value for `head` to return later.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.errors import StorageAccessDenied, StorageUnavailable, Unavailable
from kiln.settings import Settings
from kiln.storage.location import StorageLocation

S3Client = Any  # boto3 ships no type hints

log = logging.getLogger("kiln.storage")

MULTIPART_THRESHOLD = 64 << 20
"""Files above this size go up in parts (S3 takes at most 5 GiB in one PUT)."""
PART_SIZE = 64 << 20
_CHUNK = 1 << 20

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "AllAccessDisabled",
}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """A multipart upload that was started and never completed or aborted."""

    key: str
    upload_id: str
    started: datetime


class S3Storage:
    """One bucket and prefix (`location`), reached with `settings`' endpoint and credentials."""

    def __init__(self, location: StorageLocation, settings: Settings) -> None:
        self.location = location
        self.bucket = location.bucket
        self.endpoint = settings.s3_endpoint_url or f"https://s3.{settings.s3_region}.amazonaws.com"
        self._settings = settings
        self.client: S3Client = _client(settings)

    def __repr__(self) -> str:
        return f"S3Storage({str(self.location)!r}, endpoint={self.endpoint!r})"

    # -- reading ---------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata (with its stored checksums), or None when there is none."""
        with self._translated(f"look up {key}", missing_ok=True):
            return dict(
                self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            )
        return None

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix`, in key order."""
        with self._translated(f"list {prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], int(item["Size"]), item["LastModified"])

    def download(self, key: str, destination: Path) -> bool:
        """Copy the object's bytes to `destination` (atomically); False when it does not exist."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        temp = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.download")
        try:
            with self._translated(f"read {key}", missing_ok=True) as missing:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                with temp.open("xb") as out:
                    while chunk := body.read(_CHUNK):
                        out.write(chunk)
                os.replace(temp, destination)
                return True
            return not missing
        finally:
            temp.unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------------------

    def put_file_once(
        self, key: str, path: Path, *, crc32: int | None = None, sha256: str | None = None
    ) -> bool:
        """Upload `path` to `key` unless the key exists; True when this call created it.

        `crc32` (an int) or `sha256` (hex) travel as S3 checksums: the server refuses bytes
        that do not match, and `head` returns the value later.
        """
        size = path.stat().st_size
        if size > MULTIPART_THRESHOLD:
            return self._put_multipart(key, path, size)
        extra: dict[str, str] = {}
        if crc32 is not None:
            extra["ChecksumCRC32"] = base64.b64encode(crc32.to_bytes(4, "big")).decode()
        elif sha256 is not None:
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        with self._translated(f"write {key}", exists_ok=True) as exists, path.open("rb") as body:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
        return not exists

    def delete(self, key: str) -> None:
        with self._translated(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """Multipart uploads under `prefix` that were never completed (a writer died)."""
        found: list[PendingUpload] = []
        with self._translated(f"list unfinished uploads under {prefix}"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Uploads", []):
                    found.append(PendingUpload(item["Key"], item["UploadId"], item["Initiated"]))
        return found

    def abort(self, upload: PendingUpload) -> None:
        with self._translated(f"abort the upload of {upload.key}", missing_ok=True):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
            )

    def polars_options(self) -> dict[str, str]:
        """`storage_options` for Polars' scan/read/write_parquet on ``s3://`` URLs here."""
        settings = self._settings
        options = {"aws_region": settings.s3_region}
        if settings.s3_endpoint_url:
            options["aws_endpoint_url"] = settings.s3_endpoint_url
        if allow_http(settings):
            options["aws_allow_http"] = "true"
        if settings.s3_access_key_id is not None:
            options["aws_access_key_id"] = settings.s3_access_key_id.get_secret_value()
        if settings.s3_secret_access_key is not None:
            options["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
        options["aws_request_timeout"] = f"{int(settings.s3_read_timeout_s)}s"
        options["aws_connect_timeout"] = f"{int(settings.s3_connect_timeout_s)}s"
        options["aws_max_retries"] = str(settings.s3_max_attempts - 1)
        return options

    # -- internals -------------------------------------------------------------------------

    def _put_multipart(self, key: str, path: Path, size: int) -> bool:
        with self._translated(f"start uploading {key}"):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        completed = False
        try:
            parts = []
            with path.open("rb") as source:
                for number in range(1, (size + PART_SIZE - 1) // PART_SIZE + 1):
                    with self._translated(f"upload part {number} of {key}"):
                        answer = self.client.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id,
                            PartNumber=number, Body=source.read(PART_SIZE),
                        )  # fmt: skip
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            with self._translated(f"complete {key}", exists_ok=True) as exists:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts}, IfNoneMatch="*",
                )  # fmt: skip
                completed = True
            return not exists
        finally:
            if not completed:
                with contextlib.suppress(Unavailable, StorageAccessDenied):
                    self.abort(PendingUpload(key, upload_id, datetime.now()))

    @contextlib.contextmanager
    def _translated(
        self, what: str, *, missing_ok: bool = False, exists_ok: bool = False
    ) -> Iterator[list[bool]]:
        """Turn botocore's failures while doing `what` into Kiln's errors.

        Yields a flag holder that is truthy when the failure was an allowed one: the key was
        missing (`missing_ok`) or already existed (`exists_ok`).
        """
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        flag = _Flag()
        try:
            yield flag
        except NoCredentialsError:
            raise StorageAccessDenied(
                f"no S3 credentials to {what} in {self.location} at {self.endpoint}: set "
                "KILN_S3_ACCESS_KEY_ID and KILN_S3_SECRET_ACCESS_KEY (or the AWS_* variables)"
            ) from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if missing_ok and (code in _MISSING_KEY or (status == 404 and code != "NoSuchBucket")):
                flag.set()
                return
            if exists_ok and code in {"PreconditionFailed", "412"}:
                flag.set()
                return
            raise self._client_error(what, code, status, str(error.get("Message", ""))) from None
        except BotoCoreError as exc:
            raise StorageUnavailable(
                f"cannot {what} in {self.location}: the S3 endpoint {self.endpoint} did not "
                f"answer ({type(exc).__name__}: {exc}); check KILN_S3_ENDPOINT_URL and that the "
                "server is up and reachable from here"
            ) from None

    def _client_error(self, what: str, code: str, status: Any, message: str) -> Exception:
        where = f"{self.location} at {self.endpoint}"
        if code in _DENIED or status == 403:
            return StorageAccessDenied(
                f"the S3 server refused to {what} in {where}: {code or status} ({message}); "
                "check KILN_S3_ACCESS_KEY_ID / KILN_S3_SECRET_ACCESS_KEY and the key's "
                "permissions on the bucket"
            )
        if code in {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"}:
            return StorageUnavailable(
                f"the S3 server refused to {what} in {where}: the bytes it received do not "
                f"match their checksum ({code}); they were damaged on the way or the file "
                "changed while it was sent. Nothing was stored; try again"
            )
        if code == "NoSuchBucket" or (status == 404 and not code):
            return StorageUnavailable(
                f"cannot {what}: the bucket {self.bucket!r} does not exist at {self.endpoint}; "
                "create it, or fix KILN_STORAGE_URL"
            )
        return StorageUnavailable(
            f"the S3 server failed to {what} in {where}: {code or status} ({message})"
        )


class _Flag(list[bool]):
    """A mutable truth value a context manager can set for the code after its block."""

    def set(self) -> None:
        self.append(True)


def allow_http(settings: Settings) -> bool:
    if settings.s3_allow_http is not None:
        return settings.s3_allow_http
    return bool(settings.s3_endpoint_url and settings.s3_endpoint_url.startswith("http://"))


def _client(settings: Settings) -> S3Client:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise Unavailable(
            "KILN_STORAGE_URL names an S3 bucket, but boto3 is not installed: "
            "pip install 'kiln[s3]'"
        ) from None
    endpoint = settings.s3_endpoint_url
    if endpoint and endpoint.startswith("http://") and not allow_http(settings):
        raise StorageAccessDenied(
            f"KILN_S3_ENDPOINT_URL={endpoint} is plain HTTP and KILN_S3_ALLOW_HTTP is false; "
            "use an https:// endpoint or set KILN_S3_ALLOW_HTTP=true"
        )
    key = settings.s3_access_key_id
    secret = settings.s3_secret_access_key
    config = Config(
        connect_timeout=settings.s3_connect_timeout_s,
        read_timeout=settings.s3_read_timeout_s,
        retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
        # Servers other than AWS (SeaweedFS, MinIO) are addressed by path, not by host name.
        s3={"addressing_style": "path" if endpoint else "auto"},
        # boto3 >= 1.36 adds a CRC to every upload by default; keep the choice to Kiln.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session per storage: boto3's default session is not safe to share across threads.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=key.get_secret_value() if key else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=config,
    )
