"""The request logger and its background writer: every accepted row reaches a complete Parquet
file, drops are counted and logged, close() writes everything, the request path never waits."""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kiln.serving.messages import InferRequest, InferResponse, Timings, TrafficEvent
from kiln.serving.traffic_hook import TrafficSink, traffic_row
from kiln.traffic import (
    STATUS_OK,
    TRAFFIC_SCHEMA,
    FeedbackWriter,
    TrafficCollector,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
    predictions_and_confidences,
)
from kiln.traffic.layout import PART_GLOB
from kiln.traffic.records import record_row, records_to_frame
from kiln.traffic.writer import BackgroundWriter

DAY1 = int(datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC).timestamp() * 1e6)
DAY2 = int(datetime(2026, 11, 24, 0, 0, 1, tzinfo=UTC).timestamp() * 1e6)


def record(i: int, model: str = "digits", ts: int = DAY2, **kw: Any) -> TrafficRecord:
    rng = np.random.default_rng(i)
    defaults: dict[str, Any] = {
        "input": rng.random((1, 1, 4, 4), dtype=np.float32),
        "output": rng.standard_normal((1, 3)).astype(np.float32),
        "queue_us": 5,
        "batch_size": 2,
    }
    return TrafficRecord(f"req-{i}", ts + i, model, 1, 100 + i, **{**defaults, **kw})


def read_all(home: Path) -> pl.DataFrame:
    files = sorted((home / "traffic").rglob(PART_GLOB))
    return pl.read_parquet(files, hive_partitioning=False) if files else pl.DataFrame()


def settings(**kw: Any) -> TrafficSettings:
    return TrafficSettings(**{"flush_interval_s": 60.0, **kw})


def test_n_rows_logged_are_exactly_n_rows_read(tmp_path: Path) -> None:
    n = 2_500
    with TrafficLogger(tmp_path, settings(flush_rows=400)) as logger:
        for i in range(n):
            model = "digits" if i % 3 else "letters"
            assert logger.log(record(i, model=model, ts=DAY1 if i % 2 else DAY2))
    frame = read_all(tmp_path)
    assert frame.height == n
    assert frame["request_id"].n_unique() == n
    assert logger.stats.written == n and logger.stats.dropped == 0
    assert logger.stats.files > 2  # several flushes by size, split by model and day
    # Each file holds one model and one UTC day, named by its partition directories.
    for path in (tmp_path / "traffic").rglob(PART_GLOB):
        part = pl.read_parquet(path)
        assert part["model"].unique().to_list() == [path.parent.parent.name.split("=")[1]]
        days = part["timestamp"].dt.date().unique().to_list()
        assert [d.isoformat() for d in days] == [path.parent.name.split("=")[1]]
    assert pl.Schema(pl.read_parquet_schema(path)) == TRAFFIC_SCHEMA


def test_row_contents_round_trip(tmp_path: Path) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    logits = np.array([[0.5, 2.0, -1.0]], dtype=np.float32)
    failed = TrafficRecord(
        "bad", DAY2, "digits", None, 7, status="invalid_argument", error="input shape wrong"
    )
    with TrafficLogger(tmp_path, settings()) as logger:
        logger.log(record(0, input=x, output=logits))
        logger.log(failed)
        logger.log(record(2, output=np.ones((3, 3), dtype=np.float32)))  # three samples
    rows = {r["request_id"]: r for r in read_all(tmp_path).iter_rows(named=True)}
    ok = rows["req-0"]
    assert ok["input"] == x.ravel().tolist() and ok["input_shape"] == [1, 1, 4, 4]
    assert ok["scores"] == pytest.approx(logits.ravel().tolist())
    assert ok["prediction"] == 1
    expected = np.exp(2.0) / np.exp(logits.astype(np.float64)).sum()
    assert ok["confidence"] == pytest.approx(expected, rel=1e-6)
    assert ok["status"] == STATUS_OK and ok["error"] is None
    assert ok["route"] == "primary" and ok["transport"] == "grpc"
    assert ok["timestamp"] == datetime.fromtimestamp(DAY2 / 1e6, UTC)
    bad = rows["bad"]
    assert bad["status"] == "invalid_argument" and bad["error"] == "input shape wrong"
    assert bad["version"] is None and bad["input"] is None and bad["prediction"] is None
    multi = rows["req-2"]
    assert multi["prediction"] is None and multi["output_shape"] == [3, 3]


@pytest.mark.parametrize(
    ("input_shape", "output_shape"), [((1, 1, 4, 4), (1, 3)), ((2, 5), (2, 3)), ((6,), (3,))]
)
def test_same_shape_rows_convert_like_mixed_ones(
    input_shape: tuple[int, ...], output_shape: tuple[int, ...]
) -> None:
    """A flush whose tensors all share one shape takes a one-concatenation path; it must
    give exactly what the general path gives (which a single odd row forces)."""
    rng = np.random.default_rng(0)
    same = [
        record(
            i,
            input=rng.random(input_shape),  # float64: cast to the schema's float32 on the way
            output=rng.standard_normal(output_shape).astype(np.float32),
        )
        for i in range(20)
    ]
    odd = record(99, input=None, output=np.ones((1, 7), dtype=np.float32))
    fast = records_to_frame(same)
    general = records_to_frame([*same, odd]).head(len(same))
    assert fast.schema == general.schema == TRAFFIC_SCHEMA
    assert fast.equals(general, null_equal=True)
    assert fast["input_shape"][0].to_list() == list(input_shape)
    one_sample = len(output_shape) == 1 or output_shape[0] == 1
    assert fast["prediction"].null_count() == (0 if one_sample else len(same))


def test_a_row_holds_nothing_the_garbage_collector_tracks() -> None:
    """Rows wait in memory for seconds; tracked objects there slow every collection."""
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    request = InferRequest("digits", {"input": x}, id="r1")
    response = InferResponse("digits", "1", "r1", {"logits": np.zeros((1, 3), np.float32)})
    event = TrafficEvent(request, response, None, Timings(1, 2, 3, 4, 5), 300_000, 1)
    row = traffic_row(event, time.time_ns())
    gc.collect()
    assert not gc.is_tracked(row)
    assert TrafficRecord(*row).route == "primary" and type(row[6]) is str


def test_probabilities_are_not_softmaxed_twice() -> None:
    top, conf = predictions_and_confidences(np.array([[0.1, 0.7, 0.2], [1.0, 3.0, 0.0]]))
    assert top.tolist() == [1, 1]
    assert conf[0] == pytest.approx(0.7)
    assert conf[1] == pytest.approx(np.exp(3) / (np.exp(1) + np.exp(3) + 1))


def test_input_sampling_keeps_every_row(tmp_path: Path) -> None:
    with TrafficLogger(tmp_path, settings(input_sample_rate=0.0)) as logger:
        for i in range(50):
            logger.log(record(i))
    frame = read_all(tmp_path)
    assert frame.height == 50
    assert frame["input"].null_count() == 50 and frame["prediction"].null_count() == 0


def test_a_full_buffer_drops_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    taken, release = threading.Event(), threading.Event()
    written: list[int] = []

    def slow_parts(rows: list[int]) -> list[tuple[Path, pl.DataFrame]]:
        taken.set()
        release.wait(30)  # the "disk" is stuck until the test lets it go
        written.extend(rows)
        return []

    writer: BackgroundWriter[int] = BackgroundWriter(
        "test", slow_parts, max_rows=10, flush_rows=10, flush_interval_s=60
    )
    caplog.set_level(logging.WARNING, logger="kiln.traffic")
    accepted = [writer.put(i) for i in range(10)]  # the 10th wakes the writer, which blocks
    assert taken.wait(30)  # the writer holds the first 10 rows; the buffer is empty again
    more = [writer.put(i) for i in range(10, 25)]  # 10 fit again, 5 do not
    assert all(accepted) and more.count(False) == 5
    assert writer.stats.dropped_full == 5
    release.set()
    assert writer.close(30)
    assert sorted(written) == list(range(20))
    assert any("dropped 5 row(s)" in r.getMessage() for r in caplog.records)


def test_rows_arriving_during_a_write_wait_for_the_next_flush() -> None:
    """A drain writes the rows buffered when it starts, not those that arrive while it
    writes: under steady traffic, chasing them wrote a tiny file every few dozen requests,
    each paying a file's fixed cost."""
    batches: list[list[int]] = []
    first_written = threading.Event()
    writer: BackgroundWriter[int]

    def parts(rows: list[int]) -> list[tuple[Path, pl.DataFrame]]:
        batches.append(rows)
        for i in range(3):  # requests answered while this file is being written
            writer.put(100 * len(batches) + i)
        first_written.set()
        return []

    writer = BackgroundWriter("test", parts, max_rows=100, flush_rows=5, flush_interval_s=60)
    for i in range(5):  # the 5th wakes the writer
        writer.put(i)
    assert first_written.wait(30)
    assert writer.close(30)
    # The late rows of the first write waited for the next pass (here: the close), and the
    # rows offered during the close's pass were refused, not chased.
    assert batches == [[0, 1, 2, 3, 4], [100, 101, 102]]
    assert writer.stats.dropped_closed == 3


def test_close_writes_everything_and_refuses_later_rows(tmp_path: Path) -> None:
    logger = TrafficLogger(tmp_path, settings(flush_rows=10_000))
    for i in range(123):
        logger.log(record(i))
    assert read_all(tmp_path).height == 0  # nothing due yet: neither size nor time
    assert logger.close()
    assert read_all(tmp_path).height == 123
    assert not logger.log(record(999))
    assert logger.stats.dropped_closed == 1
    assert logger.close()  # idempotent
    assert logger.flush(0.1)  # nothing left to write: returns at once


def test_flush_is_a_barrier(tmp_path: Path) -> None:
    with TrafficLogger(tmp_path, settings(flush_rows=10_000)) as logger:
        for i in range(10):
            logger.log(record(i))
        assert logger.flush(30)
        assert read_all(tmp_path).height == 10


def test_a_failed_write_is_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "traffic").write_text("a file where the directory should be")
    caplog.set_level(logging.ERROR, logger="kiln.traffic")
    with TrafficLogger(tmp_path, settings()) as logger:
        logger.log(record(0))
        logger.log(record(1))
    assert logger.stats.failed == 2 and logger.stats.written == 0
    assert any("they are lost" in r.getMessage() for r in caplog.records)


def test_a_row_that_cannot_be_converted_costs_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A lone UTF-16 surrogate is a Python str but no UTF-8: Arrow cannot take it.
    caplog.set_level(logging.ERROR, logger="kiln.traffic")
    with TrafficLogger(tmp_path, settings(flush_rows=10_000)) as logger:
        logger.log(record(0))
        logger.log(dataclasses.replace(record(1), request_id="bad-\ud800"))
        logger.log(record(2))
    assert logger.stats.failed == 1 and logger.stats.written == 2
    assert sorted(read_all(tmp_path)["request_id"]) == [record(0).request_id, record(2).request_id]
    assert any("1 row(s) could not be converted" in r.getMessage() for r in caplog.records)


def test_prometheus_collector_reports_the_counters(tmp_path: Path) -> None:
    with TrafficLogger(tmp_path, settings()) as logger, FeedbackWriter(tmp_path) as feedback:
        registry = CollectorRegistry()
        registry.register(TrafficCollector(traffic=logger, feedback=feedback))
        logger.log(record(0))
        logger.flush(30)
    logger.log(record(1))  # after close: dropped
    text = generate_latest(registry).decode()
    assert 'kiln_traffic_rows_written_total{stream="traffic"} 1.0' in text
    assert 'kiln_traffic_rows_dropped_total{reason="closed",stream="traffic"} 1.0' in text
    assert 'kiln_traffic_rows_written_total{stream="feedback"} 0.0' in text


def test_no_temporary_files_remain(tmp_path: Path) -> None:
    with TrafficLogger(tmp_path, settings(flush_rows=5)) as logger:
        for i in range(40):
            logger.log(record(i))
    leftovers = [p.name for p in (tmp_path / "traffic").rglob("*") if p.is_file()]
    assert leftovers and all(name.startswith("part-") for name in leftovers)


def test_a_row_of_the_wrong_width_is_refused_at_once(tmp_path: Path) -> None:
    with TrafficLogger(tmp_path, settings()) as logger:
        with pytest.raises(ValueError, match="a traffic row has 16 fields"):
            logger.log_row(("req-1", DAY2, "digits"))
        assert logger.log_row(record_row(record(1)))
    assert read_all(tmp_path)["request_id"].to_list() == ["req-1"]


def test_string_tensors_are_logged_as_missing_and_lose_nothing_else(tmp_path: Path) -> None:
    """A model with BYTES inputs or outputs (or a BYTES request a float model refused): its
    values are not numbers, so they are null in the log, and so is their shape (readers take
    a shape to mean values of that shape are there), while the row and every other request
    of the flush are kept."""
    words = np.array([[b"kiln", b"serve"]], dtype=object)
    with TrafficLogger(tmp_path, settings()) as logger:
        logger.log(record(0, input=words, output=np.array([[b"yes"]], dtype=object)))
        logger.log(record(1))
    rows = {r["request_id"]: r for r in read_all(tmp_path).iter_rows(named=True)}
    assert rows["req-0"]["input"] is None and rows["req-0"]["input_shape"] is None
    assert rows["req-0"]["scores"] is None and rows["req-0"]["output_shape"] is None
    assert rows["req-0"]["prediction"] is None
    assert rows["req-1"]["input"] is not None and rows["req-1"]["prediction"] is not None


def test_the_serving_hook_samples_inputs_before_holding_them(tmp_path: Path) -> None:
    """An input the sample rate leaves out is never buffered: the hook asks first."""
    x = np.ones((1, 1, 4, 4), dtype=np.float32)
    request = InferRequest("digits", {"input": x}, id="r1")
    response = InferResponse("digits", "1", "r1", {"logits": np.zeros((1, 3), np.float32)})
    event = TrafficEvent(request, response, None, Timings(1, 2, 3, 4, 5), 300_000, 1)
    for rate, expected in ((0.0, None), (1.0, x.ravel().tolist())):
        home = tmp_path / str(rate)
        sink = TrafficSink(home, settings(input_sample_rate=rate))
        assert sink.logger.keep_input() is (rate == 1.0)
        sink.on_request(event)
        assert sink.close()
        (row,) = read_all(home).iter_rows(named=True)
        assert row["input"] == expected and row["prediction"] == 0
    half = TrafficLogger(tmp_path / "half", settings(input_sample_rate=0.5))
    kept = sum(half.keep_input() for _ in range(2_000))
    assert half.close() and 800 < kept < 1_200
