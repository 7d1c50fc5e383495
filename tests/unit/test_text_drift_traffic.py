"""Traffic rows of text requests: the `texts`, `text_tokens` and `text_unknown` columns are
written by the serving hook (strings by the input sample rate, counts always), read back by the
readers, null for other models, and files written before them still read."""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from kiln.serving.messages import InferRequest, InferResponse, TextStats, Timings, TrafficEvent
from kiln.serving.traffic_hook import TrafficSink, traffic_row
from kiln.traffic import (
    TEXT_COLUMNS,
    TRAFFIC_SCHEMA,
    TRAFFIC_SCHEMA_V1,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
    scan_traffic,
)
from kiln.traffic.layout import PART_GLOB, write_part

NOW = int(datetime.now(UTC).timestamp() * 1e6)
TEXTS = ["a fine film", "dull, über-long and lifeless"]


def settings(rate: float = 1.0) -> TrafficSettings:
    return TrafficSettings(flush_interval_s=60.0, input_sample_rate=rate)


def read_all(home: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((home / "traffic").rglob(PART_GLOB)), hive_partitioning=False)


def text_event(
    inputs: dict[str, np.ndarray], tokens: list[int], unknown: list[int]
) -> TrafficEvent:
    n = len(tokens)
    request = InferRequest("reviews", inputs, id="t1")
    stats = TextStats(
        np.asarray(tokens, np.int64), np.asarray(unknown, np.int64), np.zeros(n, dtype=bool)
    )
    logits = np.zeros((n, 2), np.float32)
    response = InferResponse("reviews", "1", "t1", {"logits": logits}, text_stats=stats)
    return TrafficEvent(request, response, None, Timings(1, 2, 3, 4, n), 300_000, 1)


def test_text_columns_are_in_the_schema_after_the_old_ones() -> None:
    assert list(TRAFFIC_SCHEMA)[: len(TRAFFIC_SCHEMA_V1)] == list(TRAFFIC_SCHEMA_V1)
    assert tuple(TRAFFIC_SCHEMA)[len(TRAFFIC_SCHEMA_V1) :] == TEXT_COLUMNS
    assert TRAFFIC_SCHEMA["texts"] == pl.List(pl.String())
    assert TRAFFIC_SCHEMA["text_tokens"] == TRAFFIC_SCHEMA["text_unknown"] == pl.List(pl.Int32())


def test_a_text_request_logs_its_strings_and_counts_not_a_numeric_input(tmp_path: Path) -> None:
    strings = np.array([[t.encode()] for t in TEXTS], dtype=object)  # BYTES [n, 1], as decoded
    event = text_event({"text": strings}, [3, 7], [0, 1])
    sink = TrafficSink(tmp_path, settings())
    sink.on_request(event)
    assert sink.close()
    (row,) = read_all(tmp_path).iter_rows(named=True)
    assert row["texts"] == TEXTS  # decoded from UTF-8, "ü" included
    assert row["text_tokens"] == [3, 7] and row["text_unknown"] == [0, 1]
    assert row["input"] is None and row["input_shape"] is None
    assert row["output_shape"] == [2, 2] and row["status"] == "ok"


def test_the_sample_rate_drops_strings_but_never_counts(tmp_path: Path) -> None:
    event = text_event({"text": np.array(TEXTS, dtype=object)}, [3, 7], [0, 1])
    sink = TrafficSink(tmp_path, settings(rate=0.0))
    sink.on_request(event)
    assert sink.close()
    (row,) = read_all(tmp_path).iter_rows(named=True)
    assert row["texts"] is None
    assert row["text_tokens"] == [3, 7] and row["text_unknown"] == [0, 1]


def test_the_logger_samples_texts_with_inputs(tmp_path: Path) -> None:
    with TrafficLogger(tmp_path, settings(rate=0.0)) as logger:
        for i in range(20):
            logger.log(TrafficRecord(f"r{i}", NOW + i, "reviews", 1, 100, texts=TEXTS,
                                     text_tokens=[3, 7], text_unknown=[0, 0]))  # fmt: skip
    frame = read_all(tmp_path)
    assert frame.height == 20 and frame["texts"].null_count() == 20
    assert frame["text_tokens"].null_count() == 0


def test_a_pre_tokenised_request_logs_its_ids_as_input_and_its_counts(tmp_path: Path) -> None:
    ids = np.array([[5, 6, 0], [7, 1, 8]], dtype=np.int64)
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.int64)
    event = text_event({"input_ids": ids, "attention_mask": mask}, [2, 3], [0, 1])
    sink = TrafficSink(tmp_path, settings())
    sink.on_request(event)
    assert sink.close()
    (row,) = read_all(tmp_path).iter_rows(named=True)
    assert row["texts"] is None
    assert row["input"] == ids.ravel().astype(np.float32).tolist()
    assert row["input_shape"] == [2, 3]
    assert row["text_tokens"] == [2, 3] and row["text_unknown"] == [0, 1]


def test_a_text_row_holds_nothing_the_garbage_collector_tracks() -> None:
    event = text_event(
        {"text": np.array([t.encode() for t in TEXTS], dtype=object)}, [3, 7], [0, 1]
    )
    row = traffic_row(event, time.time_ns())
    gc.collect()
    assert not gc.is_tracked(row)


def test_other_models_rows_have_null_text_columns(tmp_path: Path) -> None:
    with TrafficLogger(tmp_path, settings()) as logger:
        logger.log(TrafficRecord("img", NOW, "digits", 1, 100,
                                 input=np.zeros((1, 4), np.float32),
                                 output=np.zeros((1, 3), np.float32)))  # fmt: skip
    (row,) = read_all(tmp_path).iter_rows(named=True)
    assert all(row[c] is None for c in TEXT_COLUMNS)
    assert row["input"] == [0.0] * 4


def test_files_written_before_text_columns_still_read(tmp_path: Path) -> None:
    """A part file of an older writer has exactly the V1 columns; the reader fills the text
    columns with nulls and keeps the new file's values beside it."""
    day = datetime.fromtimestamp(NOW / 1e6, UTC).date().isoformat()
    values = {"request_id": "old", "timestamp": datetime.fromtimestamp(NOW / 1e6, UTC),
              "model": "reviews", "version": 1, "status": "ok"}  # fmt: skip
    old = pl.DataFrame({c: [values.get(c)] for c in TRAFFIC_SCHEMA_V1}, schema=TRAFFIC_SCHEMA_V1)
    write_part(tmp_path / "traffic" / "model=reviews" / f"date={day}", old)
    with TrafficLogger(tmp_path, settings()) as logger:
        logger.log(TrafficRecord("new", NOW + 1, "reviews", 1, 100, texts=TEXTS,
                                 text_tokens=[3, 7], text_unknown=[0, 1]))  # fmt: skip
    frame = scan_traffic(tmp_path, "reviews").frame.sort("timestamp").collect()
    assert frame.schema == TRAFFIC_SCHEMA
    assert frame["request_id"].to_list() == ["old", "new"]
    assert frame["texts"].to_list() == [None, TEXTS]
    assert frame["text_tokens"].to_list() == [None, [3, 7]]
