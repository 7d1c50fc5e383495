"""Readers over the traffic partitions: bad files are skipped with a warning naming them,
partitions outside the window are never opened, half-written temporaries are invisible."""

from __future__ import annotations

import logging
import os
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kiln.errors import InvalidArgument, TrafficNotFound
from kiln.traffic import (
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
    Window,
    parse_since,
    run_query,
    scan_traffic,
    traffic_stats,
)
from kiln.traffic.stats import log_bucket, percentiles

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WINDOW = Window(NOW - timedelta(hours=24), NOW)


def log_rows(home: Path, n: int, when: datetime = NOW - timedelta(hours=1)) -> Path:
    """Log `n` requests of model 'digits' at `when`; returns the partition directory."""
    ts = int(when.timestamp() * 1e6)
    with TrafficLogger(home, TrafficSettings(flush_interval_s=60)) as logger:
        for i in range(n):
            logger.log(
                TrafficRecord(
                    f"{when:%d%H}-{i}",
                    ts + i,
                    "digits",
                    1,
                    1000 + 10 * i,
                    output=np.eye(3, dtype=np.float32)[i % 3][None],
                )
            )
    return home / "traffic" / "model=digits" / f"date={when.date().isoformat()}"


def count(home: Path, window: Window = WINDOW) -> tuple[int, dict[str, str]]:
    scan = scan_traffic(home, "digits", window)
    rows = run_query(lambda: scan.frame.select(pl.len()).collect().item(), scan)
    return rows, scan.skipped


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    day = log_rows(tmp_path, 20)
    garbage = day / "part-garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet at all")
    foreign = day / "part-foreign.parquet"
    pl.DataFrame({"user": ["a"], "clicks": [3]}).write_parquet(foreign)
    mistyped = day / "part-mistyped.parquet"
    pl.DataFrame(
        {"request_id": ["x"], "timestamp": ["yesterday"], "model": ["digits"], "status": ["ok"]}
    ).write_parquet(mistyped)
    truncated = day / "part-truncated.parquet"
    whole = next(p for p in day.glob("part-*.parquet") if "-" in p.stem[5:] and p != garbage)
    truncated.write_bytes(whole.read_bytes()[:-100])
    caplog.set_level(logging.WARNING, logger="kiln.traffic")

    rows, skipped = count(tmp_path)

    assert rows == 20
    assert set(skipped) == {str(garbage), str(foreign), str(mistyped), str(truncated)}
    assert "not a Kiln file" in skipped[str(foreign)]
    assert "'timestamp' is String" in skipped[str(mistyped)]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for path in (garbage, foreign, mistyped, truncated):
        assert str(path) in warned


def test_a_file_damaged_past_its_footer_is_found_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (damaged,) = log_rows(tmp_path, 30).glob("part-*.parquet")
    log_rows(tmp_path, 10, NOW - timedelta(hours=2))  # a second, intact file
    data = bytearray(damaged.read_bytes())
    footer = struct.unpack("<i", data[-8:-4])[0]
    end = len(data) - 8 - footer
    data[4:end] = os.urandom(end - 4)  # pages destroyed, footer intact
    damaged.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="kiln.traffic")

    stats = traffic_stats(tmp_path, "digits", WINDOW)

    assert stats["requests"] == 10
    assert str(damaged) in stats["skipped_files"]
    assert "damaged" in stats["skipped_files"][str(damaged)]


def test_partitions_outside_the_window_are_not_opened(tmp_path: Path) -> None:
    log_rows(tmp_path, 5)
    old = log_rows(tmp_path, 7, NOW - timedelta(days=10))
    (old / "part-garbage.parquet").write_bytes(b"never read")
    rows, skipped = count(tmp_path)
    assert rows == 5 and skipped == {}
    everything = Window(NOW - timedelta(days=30), NOW)
    rows, skipped = count(tmp_path, everything)
    assert rows == 12 and list(skipped) == [str(old / "part-garbage.parquet")]


def test_rows_outside_the_window_inside_a_day_are_filtered(tmp_path: Path) -> None:
    log_rows(tmp_path, 4, NOW - timedelta(hours=1))
    log_rows(tmp_path, 6, NOW - timedelta(hours=3))
    rows, _ = count(tmp_path, Window(NOW - timedelta(hours=2), NOW))
    assert rows == 4


def test_temporary_files_of_a_dead_writer_are_invisible(tmp_path: Path) -> None:
    day = log_rows(tmp_path, 3)
    (day / ".part-20261124T000000000000Z-abc.parquet.tmp").write_bytes(b"half a file")
    assert count(tmp_path) == (3, {})


def test_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    log_rows(tmp_path, 1)
    with pytest.raises(TrafficNotFound, match="models with traffic: digits"):
        scan_traffic(tmp_path, "letters", WINDOW)


def test_stats_by_version_and_route(tmp_path: Path) -> None:
    log_rows(tmp_path, 10)
    stats = traffic_stats(tmp_path, "digits", WINDOW)
    assert stats["requests"] == 10 and stats["errors"] == 0
    (group,) = stats["by_version_route"]
    assert (group["version"], group["route"]) == (1, "primary")
    # Nearest-rank percentiles, read off 1%-wide log buckets: within 0.5% of the value.
    assert group["latency_p50_us"] == pytest.approx(1040, rel=0.005)  # 5th of 1000..1090
    assert group["latency_p95_us"] == pytest.approx(1090, rel=0.005)
    assert group["latency_p99_us"] == pytest.approx(1090, rel=0.005)
    assert sum(p["requests"] for p in stats["over_time"]) == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("30m", NOW - timedelta(minutes=30)),
        ("7d", NOW - timedelta(days=7)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2026-11-24T08:00", datetime(2026, 11, 24, 8, tzinfo=UTC)),
        ("2026-11-24", datetime(2026, 11, 24, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


def test_parse_since_says_what_it_accepts() -> None:
    with pytest.raises(InvalidArgument, match="24h, 30m, 7d"):
        parse_since("yesterday", NOW)


def test_histogram_percentiles_are_within_half_a_percent() -> None:
    rng = np.random.default_rng(0)
    latencies = np.concatenate([rng.gamma(4.0, 120.0, 50_000), [0, 1, 3e7]]).astype(np.int64)
    frame = pl.DataFrame({"latency_us": latencies}).select(log_bucket("latency_us").alias("b"))
    hist = frame.group_by("b").len()
    ours = percentiles(hist["b"].to_numpy(), hist["len"].to_numpy(), (0.01, 0.5, 0.99, 1.0))
    exact = np.quantile(latencies, [0.01, 0.5, 0.99, 1.0], method="inverted_cdf")
    assert ours == pytest.approx(exact.tolist(), rel=0.005)
    assert percentiles(np.array([]), np.array([]), (0.5,)) == [None]
