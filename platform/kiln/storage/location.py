"""Where Kiln keeps what outlives a process, beyond the registry database: `KILN_STORAGE_URL`.

Unset means files under `KILN_HOME` (the embedded default). `s3://bucket/prefix` puts artifact
blobs, traffic and feedback into a bucket, with the same layout as `KILN_HOME` below the
prefix: ``prefix/artifacts/sha256/ab/<sha256>``, ``prefix/traffic/model=NAME/date=DAY/part-…``
and ``prefix/feedback/date=DAY/part-…``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import InvalidArgument, quote

# S3's bucket naming rules (lowercase letters, digits, dots and hyphens, 3-63 characters).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class StorageLocation:
    """A bucket and a key prefix inside it (no leading or trailing slash; may be empty)."""

    bucket: str
    prefix: str = ""

    def key(self, *parts: str) -> str:
        """The object key of `parts` below the prefix, joined with '/'."""
        inner = "/".join(p.strip("/") for p in parts if p.strip("/"))
        return f"{self.prefix}/{inner}" if self.prefix and inner else self.prefix or inner

    def url(self, *parts: str) -> str:
        """``s3://bucket/key`` of `parts`, as Polars and users write it."""
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_storage_url(text: str | None) -> StorageLocation | None:
    """`KILN_STORAGE_URL`'s location; None when it is unset or empty (local files).

    Raises `InvalidArgument` for anything but ``s3://bucket`` or ``s3://bucket/prefix``.
    """
    if text is None or not text.strip():
        return None
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() != "s3":
        raise InvalidArgument(
            f"KILN_STORAGE_URL={quote(value)} is not an S3 URL; use s3://BUCKET/PREFIX "
            "(or leave it unset to keep artifacts and traffic under KILN_HOME)"
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise InvalidArgument(
            f"KILN_STORAGE_URL={quote(value)}: {quote(bucket)} is not a valid bucket name "
            "(3-63 lowercase letters, digits, dots and hyphens)"
        )
    prefix = prefix.strip("/")
    if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
        raise InvalidArgument(
            f"KILN_STORAGE_URL={quote(value)}: the prefix {quote(prefix)} has an empty, '.' or "
            "'..' segment; use e.g. s3://BUCKET/kiln/production"
        )
    return StorageLocation(bucket, prefix)
