"""Feedback: labels from servers and files, stored, joined with traffic, unmatched reported;
files with missing columns or wrong types rejected with a message that says what to fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from kiln.errors import FeedbackBufferFull, FeedbackRejected
from kiln.traffic import (
    FeedbackWriter,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
    Window,
    import_feedback,
    latest_labels,
    scan_feedback,
    scan_traffic,
)

NOW = datetime.now(UTC)


def log_requests(home: Path, ids: list[str], model: str = "digits") -> None:
    ts = int((NOW - timedelta(minutes=5)).timestamp() * 1e6)
    with TrafficLogger(home, TrafficSettings(flush_interval_s=60)) as logger:
        for i, rid in enumerate(ids):
            out = np.eye(3, dtype=np.float32)[i % 3][None]
            logger.log(TrafficRecord(rid, ts + i, model, 1, 100, output=out))


def labels_of(home: Path, model: str | None = None) -> dict[str, int]:
    frame = latest_labels(scan_feedback(home).frame, model).collect()
    return dict(zip(frame["request_id"], frame["label"], strict=True))


def test_import_csv_reports_matched_and_unmatched(tmp_path: Path) -> None:
    log_requests(tmp_path, ["a", "b", "c"])
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label\na,0\nb,2\nzzz,1\nb,1\n")
    result = import_feedback(tmp_path, csv, now=NOW)
    assert (result.rows, result.matched, result.unmatched) == (4, 2, 1)
    assert result.duplicates == 1 and result.unmatched_examples == ["zzz"]
    stored = labels_of(tmp_path)
    assert stored["a"] == 0 and stored["zzz"] == 1  # unmatched labels are kept
    assert stored["b"] in (1, 2)  # same received_at: either; a later import wins below
    csv.write_text("request_id,label\nb,1\n")
    import_feedback(tmp_path, csv, now=NOW + timedelta(seconds=1))
    assert labels_of(tmp_path)["b"] == 1


def test_unmatched_labels_match_once_their_request_is_logged(tmp_path: Path) -> None:
    log_requests(tmp_path, ["first"])
    csv = tmp_path / "early.csv"
    csv.write_text("request_id,label\nlater,2\n")
    assert import_feedback(tmp_path, csv).unmatched == 1
    log_requests(tmp_path, ["later"])
    traffic = scan_traffic(tmp_path, "digits").frame
    joined = traffic.join(latest_labels(scan_feedback(tmp_path).frame), on="request_id").collect()
    assert joined["request_id"].to_list() == ["later"]


def test_parquet_and_numeric_ids_and_whole_float_labels(tmp_path: Path) -> None:
    log_requests(tmp_path, ["007", "8"])
    csv = tmp_path / "ids.csv"
    csv.write_text("request_id,label\n007,1\n8,2.0\n")
    assert import_feedback(tmp_path, csv, now=NOW).matched == 2  # '007' stays '007'
    parquet = tmp_path / "labels.parquet"
    pl.DataFrame({"request_id": ["8"], "label": [0], "model": ["digits"]}).write_parquet(parquet)
    assert import_feedback(tmp_path, parquet, now=NOW + timedelta(seconds=1)).matched == 1
    assert labels_of(tmp_path, "digits") == {"007": 1, "8": 0}
    # Labels without a model count for any model; the later one names digits only.
    assert labels_of(tmp_path, "letters") == {"007": 1, "8": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,label\na,1\n", "lacks the column(s) request_id"),
        ("request_id,class\na,1\n", "lacks the column(s) label"),
        ("request_id,label\na,cat\n", "line 2: label 'cat' is not an integer class index"),
        ("request_id,label\na,1.5\n", "line 2: label 1.5 has a fraction"),
        ("request_id,label\na,1\nb,-2\n", "line 3: label -2 is negative"),
        ("request_id,label\na,1\nb,\n", "line 3: the label is missing"),
        ("request_id,label\na,1\n,2\n", "line 3: the request id is empty"),
        ("request_id,label\na,2147483648\n", "line 2: label 2147483648 is out of range"),
        ("request_id,label\n", "has a header but no rows"),
    ],
)  # fmt: skip
def test_bad_files_are_rejected_and_store_nothing(
    tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    with pytest.raises(FeedbackRejected) as err:
        import_feedback(tmp_path, bad)
    assert message in str(err.value)
    assert not (tmp_path / "feedback").exists()


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(FeedbackRejected, match="does not exist"):
        import_feedback(tmp_path, tmp_path / "missing.csv")
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(FeedbackRejected, match=r"neither \.csv nor \.parquet"):
        import_feedback(tmp_path, tmp_path / "labels.json")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(FeedbackRejected, match="cannot read feedback file"):
        import_feedback(tmp_path, tmp_path / "broken.parquet")


def test_the_cli_exits_2_with_the_message(cli: Any, kiln_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\na,cat\n")
    result = cli("feedback", "import", str(bad))
    assert result.exit_code == 2
    assert "map class names to their indices" in result.stderr
    good = tmp_path / "good.csv"
    good.write_text("request_id,label\na,3\n")
    result = cli("feedback", "import", str(good), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["rows"] == 1 and result.json()["unmatched"] == 1


def test_writer_add_is_buffered_and_validated(tmp_path: Path) -> None:
    with FeedbackWriter(tmp_path, TrafficSettings(flush_interval_s=60)) as writer:
        writer.add("r1", 4, model="digits", received_at_ns=1)
        writer.add("r2", 0, source="http")
        with pytest.raises(FeedbackRejected, match="request id"):
            writer.add("", 1)
        with pytest.raises(FeedbackRejected, match="class indices from 0"):
            writer.add("r3", -1)
        with pytest.raises(FeedbackRejected, match="valid labels are 0-9"):
            writer.add("r4", 10, num_classes=10)
        with pytest.raises(FeedbackRejected, match="out of range"):
            writer.add("r5", 2**63)
    frame = scan_feedback(tmp_path).frame.collect().sort("request_id")
    assert frame["request_id"].to_list() == ["r1", "r2"]
    assert frame["source"].to_list() == ["grpc", "http"]
    assert frame["received_at"][0] == datetime(1970, 1, 1, tzinfo=UTC)
    window = Window(NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    assert scan_feedback(tmp_path, window).frame.collect()["request_id"].to_list() == ["r2"]


def test_a_full_feedback_buffer_refuses_the_whole_call_and_drops_nothing(tmp_path: Path) -> None:
    settings = TrafficSettings(flush_interval_s=60, max_buffered_rows=3, flush_rows=3)
    with FeedbackWriter(tmp_path, settings) as writer:
        writer.add("a", 1)
        rows = [writer.row(request_id, 2) for request_id in "bcd"]
        with pytest.raises(FeedbackBufferFull, match="nothing of this call was kept: retry"):
            writer.add_all(rows)
        assert writer.stats.buffered == 1
        writer.add_all(rows[:2])
        assert writer.stats.dropped == 0
    frame = scan_feedback(tmp_path).frame.collect().sort("request_id")
    assert frame["request_id"].to_list() == ["a", "b", "c"]


def test_parquet_labels_of_any_numeric_type_are_checked_row_by_row(tmp_path: Path) -> None:
    """Unsigned labels past int64, NaN and fractions in a float column, a label beyond the
    model's classes: each such row is refused with its reason, the others imported."""
    files = {
        "unsigned.parquet": pl.DataFrame(
            {"request_id": ["a", "b"], "label": pl.Series([1, 2**64 - 1], dtype=pl.UInt64)}
        ),
        "floats.parquet": pl.DataFrame(
            {"request_id": ["a", "b", "c", "d"], "label": [1.0, float("nan"), 2.5, 7.0]}
        ),
    }
    reasons = {}
    for name, frame in files.items():
        frame.write_parquet(tmp_path / name)
        result = import_feedback(
            tmp_path, tmp_path / name, model="digits", classes=lambda _: 3, skip_invalid=True
        )
        assert result.rows == 1
        reasons[name] = [e["reason"] for e in result.refused_examples]
        assert all("row" in e and "line" not in e for e in result.refused_examples)
    assert reasons["unsigned.parquet"] == [
        "label 18446744073709551615 is out of range: the model has 3 classes, valid labels are 0-2"
    ]
    assert [r.split(":")[0] for r in reasons["floats.parquet"]] == [
        "label 'NaN' is not a number",
        "label 2.5 has a fraction",
        "label 7.0 is out of range",
    ]
    # Naming no model, 7 is a class index as far as anyone knows: two invalid rows.
    with pytest.raises(FeedbackRejected, match="2 of 4 rows are invalid"):
        import_feedback(tmp_path, tmp_path / "floats.parquet", classes=lambda _: 3)


@pytest.mark.parametrize("classes", [None, 1, 10])
def test_the_label_expression_is_label_problem(classes: int | None) -> None:
    """Readers check labels with `label_in_range`, writers with `label_problem`: one rule."""
    from kiln.traffic.labels import MAX_LABEL, label_problem
    from kiln.traffic.validity import label_in_range

    labels = [-(2**63), -1, 0, 1, 9, 10, 11, MAX_LABEL, MAX_LABEL + 1, 2**63 - 1, None]
    limit = None if classes is None else pl.lit(classes)
    ok = pl.DataFrame({"label": labels}).select(label_in_range(limit))["label"].to_list()
    assert ok == [v is not None and label_problem(v, classes) is None for v in labels]
