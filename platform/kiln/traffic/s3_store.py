"""`S3LogStore`: the traffic log and the feedback store in an S3 bucket (`KILN_STORAGE_URL`).

Keys follow the local layout below the URL's prefix. Writers go through an `Outbox`. Readers:

- list the keys of the partitions wanted: one listing per day of a window up to
  `DAY_LISTINGS` days long (the partition pushdown: other days are never listed), else one
  listing of the model and pruning by the ``date=`` in each key;
- read each part's footer (its schema) over ``s3://``, and check its integrity without reading
  it: the CRC-32 S3 stored for the object when it was uploaded (the server verified it on
  receipt) must equal the CRC-32 in its name. An object replaced afterwards carries another
  checksum, or none: one without a stored checksum is read and summed here, as a local file.
  A mismatch is a damaged or replaced file, skipped with a warning that names its URL;
- scan the good ones with Polars over ``s3://`` (`S3Storage.polars_options`).

Part objects never change once written, so what was learnt about one (footer, check) is kept
for the life of the process, keyed by key, size and modification time.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import polars as pl

from kiln.storage import S3Storage, StoredObject
from kiln.traffic.checksums import FileCheck, file_crc, name_crc
from kiln.traffic.layout import PART_GLOB, date_of_dir
from kiln.traffic.outbox import Outbox, PartSink
from kiln.traffic.store import Footer, LogStore, PartFile

DAY_LISTINGS = 31
"""Windows of up to this many days are listed day by day; longer ones (or none) list the
model's whole prefix once."""
PARALLEL = 16
"""Footers and checks fetched at once (each is a round trip; boto3 clients are thread-safe)."""

T = TypeVar("T")
_FOOTERS: dict[tuple[str, int, float], Footer] = {}
_CHECKS: dict[tuple[str, int, float], FileCheck] = {}
_CACHE_LIMIT = 65_536


class S3LogStore(LogStore):
    """Part files in `storage`'s bucket below its prefix; the outbox under `home`."""

    def __init__(self, home: Path, storage: S3Storage) -> None:
        self.home = home
        self.storage = storage
        location = storage.location
        self._outbox = home / "outbox" / location.bucket / location.prefix
        self._listed: dict[str, StoredObject] = {}

    def __repr__(self) -> str:
        return f"S3LogStore({str(self.storage.location)!r}, outbox={str(self._outbox)!r})"

    @property
    def write_root(self) -> Path:
        return self._outbox

    def where(self, *parts: str) -> str:
        return self.storage.location.url(*parts)

    # -- listing ---------------------------------------------------------------------------

    def models(self) -> list[str]:
        base = self.storage.location.key("traffic") + "/"
        found = set()
        for item in self.storage.objects(base):
            key, sep, value = item.key[len(base) :].partition("/")[0].partition("=")
            if sep and key == "model":
                found.add(unquote(value))
        return sorted(found)

    def has_model(self, model: str, relative: str) -> bool:
        listing = self.storage.objects(self.storage.location.key(relative) + "/")
        return next(iter(listing), None) is not None

    def parts(self, relative: str, first: date | None, last: date | None) -> list[PartFile]:
        base = self.storage.location.key(relative) + "/"
        if first is not None and last is not None and (last - first).days < DAY_LISTINGS:
            days = (first + timedelta(days=i) for i in range((last - first).days + 1))
            prefixes = [f"{base}date={day.isoformat()}/" for day in days]
        else:
            prefixes = [base]
        found: list[PartFile] = []
        for prefix in prefixes:
            for item in self.storage.objects(prefix):
                folder, sep, name = item.key[len(base) :].partition("/")
                day = date_of_dir(Path(folder))
                if not sep or "/" in name or day is None or not fnmatch(name, PART_GLOB):
                    continue
                if (first is not None and day < first) or (last is not None and day > last):
                    continue
                url = f"s3://{self.storage.bucket}/{item.key}"
                self._listed[url] = item
                found.append(url)
        return found

    # -- verifying -------------------------------------------------------------------------

    def footers(self, parts: Sequence[PartFile]) -> list[Footer]:
        return self._each(parts, _FOOTERS, self._footer)

    def checks(self, parts: Sequence[PartFile]) -> list[FileCheck]:
        return self._each(parts, _CHECKS, self._check)

    def _footer(self, url: str) -> Footer:
        try:
            return self.scan([url]).collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            return self.scrub(f"{type(exc).__name__}: {exc}")

    def _check(self, url: str) -> FileCheck:
        expected = name_crc(url.rsplit("/", 1)[-1])
        if expected is None:
            return FileCheck(checked=False)
        key = self._key(url)
        head = self.storage.head(key)
        if head is None:
            return FileCheck(checked=False, problem="it was deleted while it was being read")
        stored = _stored_crc(head.get("ChecksumCRC32"))
        if stored is None:
            # Uploaded without a checksum (by another tool, or replaced since): sum the bytes.
            found = self._summed(key)
            source = "its bytes"
        else:
            found, source = stored, "the CRC-32 S3 stored for its bytes"
        if found != expected:
            return FileCheck(
                checked=True,
                problem=(
                    f"{source} ({found:08x}) do not match the CRC-32 in its name "
                    f"({expected:08x}): the object was damaged or replaced after it was written"
                ),
            )
        return FileCheck(checked=True)

    def _summed(self, key: str) -> int:
        with tempfile.TemporaryDirectory(prefix="kiln-verify-") as scratch:
            path = Path(scratch) / "part.parquet"
            if not self.storage.download(key, path):
                return -1
            return file_crc(path)

    # -- reading ---------------------------------------------------------------------------

    def scan(self, parts: Sequence[PartFile], **options: Any) -> pl.LazyFrame:
        return pl.scan_parquet(
            [str(p) for p in parts], storage_options=self.storage.polars_options(), **options
        )

    def read(self, part: PartFile) -> pl.DataFrame:
        try:
            return pl.read_parquet(str(part), storage_options=self.storage.polars_options())
        except (pl.exceptions.PolarsError, OSError):
            # Damaged data, or the bucket went away: only the first may skip the file.
            # `head` raises StorageUnavailable / StorageAccessDenied for the second.
            self.storage.head(self._key(str(part)))
            raise

    def sink(self, stream: str) -> PartSink:
        return Outbox(self.storage, self._outbox, stream)

    # -- internals -------------------------------------------------------------------------

    def _key(self, url: str) -> str:
        return url.removeprefix(f"s3://{self.storage.bucket}/")

    def _each(
        self,
        parts: Sequence[PartFile],
        cache: dict[tuple[str, int, float], T],
        fetch: Callable[[str], T],
    ) -> list[T]:
        """`fetch` of each part (in parallel), cached by what the listing said of it."""
        urls = [str(p) for p in parts]
        ids = [self._identity(u) for u in urls]
        todo = {i: u for i, u in zip(ids, urls, strict=True) if i not in cache}
        if todo:
            if len(cache) + len(todo) > _CACHE_LIMIT:
                cache.clear()
            with ThreadPoolExecutor(min(PARALLEL, len(todo))) as pool:
                # list() re-raises a storage error of any of them here, in the caller.
                values = list(pool.map(fetch, todo.values()))
            cache.update(zip(todo, values, strict=True))
        return [cache[i] for i in ids]

    def _identity(self, url: str) -> tuple[str, int, float]:
        item = self._listed.get(url)
        if item is None:
            return (url, -1, 0.0)
        return (f"{self.storage.endpoint} {url}", item.size, item.modified.timestamp())

    def scrub(self, text: str) -> str:
        """`text` without the credentials (Polars' messages may echo its options)."""
        for name in ("aws_secret_access_key", "aws_access_key_id"):
            secret = self.storage.polars_options().get(name)
            if secret:
                text = text.replace(secret, "***")
        return text


def _stored_crc(value: object) -> int | None:
    """S3's ChecksumCRC32 (base64 of the big-endian CRC-32) as an int; None when there is
    none, or it is a multipart upload's checksum of checksums ("…-N")."""
    if not isinstance(value, str) or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


__all__ = ["DAY_LISTINGS", "S3LogStore"]
