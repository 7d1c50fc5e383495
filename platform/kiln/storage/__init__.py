"""Object storage for artifact blobs, traffic and feedback: `KILN_STORAGE_URL=s3://bucket/prefix`.

    storage = kiln.storage.open_storage(settings)   # None: files under KILN_HOME
    storage.put_file_once(storage.location.key("traffic", ...), path, crc32=...)

The registry (`kiln.registry.s3_blobs`) and the traffic log (`kiln.traffic`) build on it; see
docs/user-guide/deployment.md for the settings.
"""

from __future__ import annotations

from kiln.settings import Settings
from kiln.storage.location import StorageLocation, parse_storage_url
from kiln.storage.s3 import PendingUpload, S3Storage, StoredObject

__all__ = [
    "PendingUpload",
    "S3Storage",
    "StorageLocation",
    "StoredObject",
    "open_storage",
    "parse_storage_url",
]


def open_storage(settings: Settings) -> S3Storage | None:
    """The bucket `settings.storage_url` names, or None when storage is local files."""
    location = parse_storage_url(settings.storage_url)
    return None if location is None else S3Storage(location, settings)
