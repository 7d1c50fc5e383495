"""Traffic and feedback in an S3 bucket (KILN_STORAGE_URL), against a real SeaweedFS server:
writers of several replicas land in one layout, readers verify each object by the CRC-32 S3
stored for it, a bucket that is down leaves rows waiting in the outbox until it is back, and
bad credentials or an unreachable endpoint are clear errors."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from kiln.errors import StorageAccessDenied, StorageUnavailable
from kiln.settings import Settings
from kiln.storage import S3Storage
from kiln.traffic import (
    FeedbackWriter,
    LogStore,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
    Window,
    latest_labels,
    log_store,
    run_query,
    scan_feedback,
    scan_traffic,
    traffic_models,
    traffic_stats,
)
from kiln.traffic.checksums import name_crc
from kiln.traffic.s3_store import S3LogStore
from tests.integration.test_traffic_cli import prepare
from tests.seaweed import SeaweedServer

QUIET = TrafficSettings(flush_interval_s=60)  # flushes only when the test says so
NOW = datetime.now(UTC)


def bucket_store(**overrides: Any) -> S3LogStore:
    store = log_store(Settings(**overrides))
    assert isinstance(store, S3LogStore)
    return store


def record(request_id: str, model: str = "digits", when: datetime = NOW) -> TrafficRecord:
    ts = int((when - timedelta(minutes=5)).timestamp() * 1e6)
    return TrafficRecord(
        request_id, ts, model, 1, 1000, output=np.eye(3, dtype=np.float32)[:1], batch_size=1
    )


def log(store: LogStore | Path, ids: list[str], **kwargs: Any) -> TrafficLogger:
    logger = TrafficLogger(store, QUIET)
    for request_id in ids:
        assert logger.log(record(request_id, **kwargs))
    return logger


def logged_ids(store: LogStore) -> list[str]:
    scan = scan_traffic(store, "digits", Window.last("1d"))
    frame = run_query(lambda: scan.frame.select("request_id").collect(), scan)
    return sorted(frame["request_id"].to_list())


def keys(storage: S3Storage, under: str = "") -> list[str]:
    return [o.key for o in storage.objects(storage.location.key(under))]


def outbox_files(home: Path) -> list[Path]:
    return sorted((home / "outbox").rglob("part-*.parquet"))


def test_two_replicas_write_one_log_and_a_scan_sees_every_row(s3_home: Path) -> None:
    first, second = bucket_store(), bucket_store()  # two processes' stores
    a = log(first, [f"a{i}" for i in range(30)])
    b = log(second, [f"b{i}" for i in range(20)])
    a.log(record("a-other", model="iris"))
    assert a.close(30) and b.close(30)

    assert a.stats.pending_upload_files == b.stats.pending_upload_files == 0
    assert outbox_files(s3_home) == []  # uploaded, then deleted locally
    assert not (s3_home / "traffic").exists()  # nothing was written under KILN_HOME itself
    day = (NOW - timedelta(minutes=5)).date().isoformat()
    objects = keys(first.storage, "traffic")
    assert len(objects) == 3  # one part per writer and model
    prefix = first.storage.location.key("traffic")
    assert all(
        k.startswith((f"{prefix}/model=digits/date={day}/part-", f"{prefix}/model=iris/"))
        for k in objects
    )
    for key in objects:  # each object carries its name's CRC-32 as its S3 checksum
        head = first.storage.head(key)
        assert head is not None and "ChecksumCRC32" in head
        crc = name_crc(key.rsplit("/", 1)[1])
        assert crc is not None
        assert int.from_bytes(base64.b64decode(head["ChecksumCRC32"]), "big") == crc

    reader = bucket_store()
    assert logged_ids(reader) == sorted([f"a{i}" for i in range(30)] + [f"b{i}" for i in range(20)])
    assert traffic_models(reader) == ["digits", "iris"]
    stats = traffic_stats(reader, "digits", Window.last("1d"))
    assert stats["requests"] == 50 and stats["files"] == 2 and stats["skipped_files"] == {}
    assert stats["files_without_checksums"] == 0
    # A window that does not reach the logged day lists nothing of it.
    old = Window(NOW - timedelta(days=9), NOW - timedelta(days=8))
    assert scan_traffic(reader, "digits", old).files == []


def test_the_cli_reads_traffic_and_imports_feedback_in_the_bucket(
    s3_home: Path, tmp_path: Path, cli: Any
) -> None:
    prepare(s3_home, tmp_path, 0.5)  # a version and 300 requests, written as local files
    store = bucket_store()
    for path in sorted((s3_home / "traffic").rglob("part-*.parquet")):  # the same layout
        key = store.storage.location.key(path.relative_to(s3_home).as_posix())
        assert store.storage.put_file_once(key, path, crc32=name_crc(path.name))
        path.unlink()

    stats = cli("traffic", "stats", "shades", "--since", "1h", "--json")
    assert stats.exit_code == 0, stats.stderr
    assert stats.json()["requests"] == 300
    imported = cli("feedback", "import", str(tmp_path / "labels.csv"), "--json")
    assert imported.exit_code == 0, imported.stderr
    result = imported.json()
    assert result["matched"] == 100 and result["stored_at"].startswith("s3://kiln/")
    assert keys(store.storage, "feedback") and not (s3_home / "feedback").exists()
    report = cli("evaluate", "shades", "--json")
    assert report.exit_code == 0, report.stderr
    assert report.json()["labelled"] == 100


def test_feedback_from_servers_and_files_joins_traffic_in_the_bucket(
    s3_home: Path, tmp_path: Path
) -> None:
    store = bucket_store()
    log(store, ["r1", "r2", "r3"]).close(30)
    with FeedbackWriter(store, QUIET) as feedback:
        feedback.add("r1", 2, model="digits")
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nr2,1\nr9,0\n")
    from kiln.traffic import import_feedback

    result = import_feedback(store, labels, model="digits")
    assert result.matched == 1 and result.unmatched == 1
    assert result.stored_at is not None and result.stored_at.startswith("s3://")

    traffic, fb = scan_traffic(store, "digits"), scan_feedback(store)
    joined = (
        traffic.frame.select("request_id")
        .join(latest_labels(fb.frame, "digits"), on="request_id")
        .collect()
        .sort("request_id")
    )
    assert joined["request_id"].to_list() == ["r1", "r2"]
    assert joined["label"].to_list() == [2, 1]


@pytest.mark.parametrize("with_checksum", [True, False])
def test_an_object_replaced_in_the_bucket_is_skipped_with_a_warning(
    s3_home: Path,
    seaweed_server: SeaweedServer,
    caplog: pytest.LogCaptureFixture,
    with_checksum: bool,
) -> None:
    store = bucket_store()
    log(store, ["keep1", "keep2"]).close(30)
    log(store, ["gone1", "gone2", "gone3"]).close(30)
    options = store.storage.polars_options()
    parts = {k: pl.read_parquet(f"s3://kiln/{k}", storage_options=options)
             for k in keys(store.storage, "traffic")}  # fmt: skip
    victim = next(k for k, frame in parts.items() if frame.height == 3)
    # Valid Parquet with a schema Kiln accepts: only the checksum can tell.
    forged = s3_home.parent / "forged.parquet"
    parts[victim].with_columns(pl.lit(9, pl.Int64).alias("version")).write_parquet(forged)
    client = seaweed_server.client()
    if not with_checksum:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=seaweed_server.endpoint, region_name="us-east-1",
            aws_access_key_id=seaweed_server.access_key,
            aws_secret_access_key=seaweed_server.secret_key,
            config=Config(s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required"),
        )  # fmt: skip
    client.put_object(Bucket="kiln", Key=victim, Body=forged.read_bytes())
    head = client.head_object(Bucket="kiln", Key=victim, ChecksumMode="ENABLED")
    assert ("ChecksumCRC32" in head) is with_checksum
    caplog.set_level(logging.WARNING, logger="kiln.traffic")

    reader = bucket_store()
    assert logged_ids(reader) == ["keep1", "keep2"]
    scan = scan_traffic(reader, "digits")
    url = f"s3://kiln/{victim}"
    assert list(scan.skipped) == [url]
    assert "do not match the CRC-32 in its name" in scan.skipped[url]
    assert any(url in r.getMessage() for r in caplog.records)


def test_rows_wait_in_the_outbox_while_the_bucket_is_down(
    s3_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiln.traffic")
    down = bucket_store(
        s3_endpoint_url="http://127.0.0.1:1", s3_max_attempts=1, s3_connect_timeout_s=1
    )
    logger = log(down, [f"w{i}" for i in range(10)])
    assert logger.flush(30)
    for i in range(10, 15):
        logger.log(record(f"w{i}"))
    assert logger.flush(30)
    assert logger.stats.pending_upload_files == 2 and logger.stats.pending_upload_rows == 15
    assert logger.stats.written == 15 and logger.stats.dropped == 0
    assert logger.close(30)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    # One error for the outage, one at close saying where the files wait.
    assert len(errors) == 2, errors
    assert "127.0.0.1:1" in errors[0] and "retried at every flush" in errors[0]
    assert "2 part file(s) with 15 row(s)" in errors[1] and "outbox" in errors[1]
    assert len(outbox_files(s3_home)) == 2

    # The next process with the right endpoint uploads them when it starts.
    up = bucket_store()
    late = log(up, ["after"])
    assert late.close(30)
    assert outbox_files(s3_home) == []
    assert logged_ids(up) == sorted(["after", *(f"w{i}" for i in range(15))])


def test_wrong_credentials_are_a_clear_cli_error(
    s3_home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    log(bucket_store(), ["r1"]).close(30)
    monkeypatch.setenv("KILN_S3_SECRET_ACCESS_KEY", "not-the-secret-123")
    result = cli("traffic", "stats", "digits")
    assert result.exit_code == 2, result.stderr
    assert "refused" in result.stderr and "KILN_S3_SECRET_ACCESS_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert "not-the-secret-123" not in result.stderr + result.stdout
    with pytest.raises(StorageAccessDenied):
        scan_traffic(bucket_store(), "digits")


def test_an_unreachable_endpoint_is_a_clear_error_not_a_hang(
    s3_home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    result = cli("traffic", "stats", "digits")
    assert result.exit_code == 2, result.stderr
    assert "http://127.0.0.1:1" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(StorageUnavailable):
        scan_feedback(bucket_store())


def test_unset_storage_keeps_local_files(kiln_home: Path) -> None:
    store = log_store(Settings())
    assert store.write_root == kiln_home
    log(store, ["local"]).close(30)
    assert list((kiln_home / "traffic").rglob("part-*.parquet"))
    assert not (kiln_home / "outbox").exists()


def test_an_unverified_object_damaged_past_its_footer_is_skipped(s3_home: Path) -> None:
    """A part without a CRC-32 in its name (another tool's) is checked only by reading it:
    a query that fails on its pages drops it and runs again over the rest."""
    store = bucket_store()
    log(store, [f"r{i}" for i in range(10)]).close(30)
    good = keys(store.storage, "traffic")[0]
    local = s3_home.parent / "whole.parquet"
    assert store.storage.download(good, local)
    data = bytearray(local.read_bytes())
    footer = struct.unpack("<i", data[-8:-4])[0]
    end = len(data) - 8 - footer
    data[4:end] = os.urandom(end - 4)  # pages destroyed, footer intact
    local.write_bytes(bytes(data))
    foreign = good.rsplit("/", 1)[0] + "/part-foreign.parquet"
    assert store.storage.put_file_once(foreign, local)

    stats = traffic_stats(bucket_store(), "digits", Window.last("1d"))

    assert stats["requests"] == 10
    url = f"s3://kiln/{foreign}"
    assert list(stats["skipped_files"]) == [url] and "damaged" in stats["skipped_files"][url]


def test_retraining_reads_labelled_traffic_from_the_bucket(s3_home: Path) -> None:
    """What `kiln retrain` and the traffic gate learn from: inputs logged by a server, labels
    from feedback, both in the bucket."""
    from kiln.evaluate.labelled import labelled_traffic

    store = bucket_store()
    x = np.random.default_rng(0).random((6, 1, 4, 4), dtype=np.float32)
    with TrafficLogger(store, QUIET) as logger:
        for i, xi in enumerate(x):
            logger.log(dataclasses.replace(record(f"r{i}"), input=xi[None]))
    with FeedbackWriter(store, QUIET) as feedback:
        for i in range(4):
            feedback.add(f"r{i}", i % 3, model="digits")

    rows = labelled_traffic(bucket_store(), "digits", Window.last("1d"), num_classes=3)

    assert sorted(rows.request_ids) == ["r0", "r1", "r2", "r3"]
    assert rows.x.shape == (4, 1, 4, 4) and sorted(rows.y.tolist()) == [0, 0, 1, 2]
