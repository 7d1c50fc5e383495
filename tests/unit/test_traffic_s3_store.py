"""The pieces of the S3 log store that need no server: which store settings pick, how S3's
stored checksum is read, and an outbox file damaged on the local disk (never uploaded)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import polars as pl
import pytest

from kiln.errors import InvalidArgument
from kiln.settings import Settings
from kiln.storage import S3Storage, parse_storage_url
from kiln.traffic import LocalLogStore, log_store
from kiln.traffic.outbox import DAMAGED_SUFFIX, Outbox
from kiln.traffic.s3_store import S3LogStore, _stored_crc

DEAD = {"s3_endpoint_url": "http://127.0.0.1:1", "s3_max_attempts": 1}


def test_settings_pick_the_store(tmp_path: Path) -> None:
    local = log_store(Settings(home=tmp_path, storage_url=None))
    assert isinstance(local, LocalLogStore) and local.write_root == tmp_path
    bucket = log_store(Settings(home=tmp_path, storage_url="s3://logs/prod/eu", **DEAD))
    assert isinstance(bucket, S3LogStore)
    assert bucket.where("traffic") == "s3://logs/prod/eu/traffic"
    assert bucket.write_root == tmp_path / "outbox" / "logs" / "prod" / "eu"
    with pytest.raises(InvalidArgument):
        log_store(Settings(home=tmp_path, storage_url="file:///tmp/x"))


def test_stored_checksums_are_read_as_s3_writes_them() -> None:
    assert _stored_crc(base64.b64encode((0xDEADBEEF).to_bytes(4, "big")).decode()) == 0xDEADBEEF
    assert _stored_crc(None) is None
    assert _stored_crc("AAAAAA==-3") is None  # a multipart upload's checksum of checksums
    assert _stored_crc("not base64!") is None


def test_an_outbox_file_damaged_on_disk_is_set_aside_not_uploaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path, **DEAD)
    location = parse_storage_url("s3://logs/p")
    assert location is not None
    outbox = Outbox(S3Storage(location, settings), tmp_path / "outbox", "feedback")
    written = outbox.write(tmp_path / "outbox" / "feedback" / "date=2026-12-01",
                           pl.DataFrame({"request_id": ["a", "b"]}))  # fmt: skip
    data = bytearray(written.read_bytes())
    data[10] ^= 0xFF
    written.write_bytes(bytes(data))
    caplog.set_level(logging.ERROR, logger="kiln.traffic")

    outbox.settle(final=True)  # no connection is tried: the endpoint is dead

    assert outbox.pending_files == 0 and outbox.lost_rows == 2
    assert not written.exists()
    assert written.with_name(written.name + DAMAGED_SUFFIX).exists()
    assert any("damaged on this disk" in r.getMessage() for r in caplog.records)
