"""`kiln traffic stats` and `kiln evaluate` through the real CLI, with the reference profile
read from the registry the way `kiln train --name` stores it."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import kiln.registry
from kiln.data.profile import reference_profile
from kiln.settings import Settings
from kiln.traffic import (
    FEEDBACK_SCHEMA_V1,
    FeedbackWriter,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
    scan_feedback,
)
from kiln.traffic.labels import MAX_LABEL
from kiln.traffic.layout import write_part
from tests.conftest import run_kiln

CLASSES = ["dark", "light"]


def images(n: int, seed: int, brightness: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(brightness, 0.15, (n, 1, 8, 8)), 0, 1).astype(np.float32)


def classify(x: np.ndarray) -> np.ndarray:
    mean = x.reshape(len(x), -1).mean(axis=1)
    return np.stack([0.5 - mean, mean - 0.5], axis=1).astype(np.float32) * 10


def prepare(home: Path, tmp_path: Path, *brightness: float) -> None:
    """Version 1 trained on images of brightness 0.3 and 0.7 (half each); 300 requests with
    `brightness` (an equal share each)."""
    train = np.concatenate([images(500, 1, 0.3), images(500, 2, 0.7)])
    held_out = np.concatenate([images(100, 3, 0.3), images(100, 4, 0.7)])
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    config = {
        "class_names": CLASSES,
        "reference": reference_profile(train, [1, 8, 8], classify(held_out)),
    }
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        registry.register_version("shades", checkpoint=checkpoint, config=config, metrics={})
    x = np.concatenate([images(300 // len(brightness), 5, b) for b in brightness])
    ts = int((datetime.now(UTC) - timedelta(minutes=20)).timestamp() * 1e6)
    with TrafficLogger(home, TrafficSettings(flush_interval_s=60)) as logger:
        for i, (xi, si) in enumerate(zip(x, classify(x), strict=True)):
            logger.log(
                TrafficRecord(
                    f"r{i}", ts + 1000 * i, "shades", 1, 300 + i, input=xi[None], output=si[None]
                )
            )
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"r{i},{i % 2}\n" for i in range(100)))


def test_traffic_stats_json(cli: Any, kiln_home: Path, tmp_path: Path) -> None:
    prepare(kiln_home, tmp_path, 0.5)
    result = cli("traffic", "stats", "shades", "--since", "1h", "--json")
    assert result.exit_code == 0, result.stderr
    stats = result.json()
    assert stats["requests"] == 300 and stats["error_rate"] == 0
    (group,) = stats["by_version_route"]
    assert group["latency_p50_us"] == pytest.approx(449, rel=0.005)  # 150th of 300..599
    human = cli("traffic", "stats", "shades")
    assert human.exit_code == 0 and "300 requests" in human.stdout


def test_evaluate_flags_drift_and_writes_a_report(
    cli: Any, kiln_home: Path, tmp_path: Path
) -> None:
    prepare(kiln_home, tmp_path, 0.95)  # far brighter than anything seen in training
    imported = cli("feedback", "import", str(tmp_path / "labels.csv"), "--json")
    assert imported.exit_code == 0 and imported.json()["matched"] == 100
    page = tmp_path / "report.html"
    result = cli("evaluate", "shades", "--json", "--report", str(page))
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["labelled"] == 100 and report["label_coverage"] == 100 / 300
    (drift,) = report["drift"]["versions"]
    assert drift["drift"] is True
    assert {"mean_intensity", "ink_fraction"} <= set(drift["inputs"]["drifted"])
    assert drift["predictions"]["moved_classes"] == ["dark", "light"]
    html = page.read_text()
    images_in_page = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images_in_page) == 3  # accuracy, drift per feature, latency
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images_in_page)
    human = cli("evaluate", "shades")
    assert "DRIFT" in human.stdout and "mean_intensity" in human.stdout


def test_evaluate_without_drift(cli: Any, kiln_home: Path, tmp_path: Path) -> None:
    prepare(kiln_home, tmp_path, 0.3, 0.7)  # what it was trained on
    report = cli("evaluate", "shades", "--json", "--psi-threshold", "0.25").json()
    (drift,) = report["drift"]["versions"]
    assert drift["inputs"]["drifted"] == [] and drift["drift"] is False
    assert report["drift"]["thresholds"]["psi"] == 0.25


def test_unknown_model_exits_2_with_a_hint(cli: Any, kiln_home: Path) -> None:
    result = cli("traffic", "stats", "nothing")
    assert result.exit_code == 2
    assert "no traffic logged for model 'nothing'" in result.stderr
    result = cli("evaluate", "nothing", "--since", "soon")
    assert result.exit_code == 2 and "24h, 30m, 7d" in result.stderr


def test_evaluate_skips_labels_outside_the_models_classes(
    cli: Any, kiln_home: Path, tmp_path: Path
) -> None:
    """A label of 100000 (accepted by a server that did not know the classes) or 2**62 (stored
    by an older Kiln) sizes nothing: it is counted and left out."""
    prepare(kiln_home, tmp_path, 0.5)
    with FeedbackWriter(kiln_home) as feedback:
        for i in range(10):
            feedback.add(f"r{i}", i % 2, model="shades")
        feedback.add("r10", 100_000, model="shades")
        feedback.add("r11", MAX_LABEL)
    old = pl.DataFrame(
        {"request_id": ["r12", "r13"], "label": [2**62, -3], "source": "file:old.csv",
         "model": "shades", "received_at": datetime.now(UTC)},
    ).with_columns(pl.col("received_at").dt.cast_time_unit("us"))  # fmt: skip
    write_part(kiln_home / "feedback" / f"date={datetime.now(UTC).date()}",
               old.select(FEEDBACK_SCHEMA_V1.names()).cast(dict(FEEDBACK_SCHEMA_V1)))  # type: ignore[arg-type]  # fmt: skip
    result = cli("evaluate", "shades", "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["labelled"] == 10
    skipped = report["skipped_rows"]
    assert skipped["labels_out_of_range"] == 2 and skipped["feedback_labels_invalid"] == 2
    assert {e["label"] for e in skipped["out_of_range_examples"]} == {100_000, MAX_LABEL}
    (version,) = report["versions"]
    assert version["confusion"]["classes"] == CLASSES and len(version["per_class"]) == 2
    human = cli("evaluate", "shades")
    assert human.exit_code == 0 and "outside the model's classes" in human.stdout


def test_feedback_import_refuses_a_file_with_invalid_rows_as_a_whole(
    cli: Any, kiln_home: Path, tmp_path: Path
) -> None:
    prepare(kiln_home, tmp_path, 0.5)  # 'shades' has 2 classes
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\nr0,0\nr1,5\nr2,1\n,1\nr4,-1\nr5,100000\nr6,x\nr7,1.5\nr8,1\n")
    result = cli("feedback", "import", str(bad), "--model", "shades")
    assert result.exit_code == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "6 of 9 rows are invalid" in message and "nothing was imported" in message
    assert "line 3: label 5 is out of range: the model has 2 classes, valid labels are 0-1" in (
        message
    )
    assert "line 5: the request id is empty" in message and "--skip-invalid" in message
    assert not (kiln_home / "feedback").exists()

    result = cli("feedback", "import", str(bad), "--model", "shades", "--skip-invalid", "--json")
    assert result.exit_code == 0, result.stderr
    imported = result.json()
    assert imported["rows"] == 3 and imported["refused"] == 6
    assert [r["line"] for r in imported["refused_examples"]] == [3, 5, 6, 7, 8]
    assert "out of range" in imported["refused_examples"][0]["reason"]
    stored = scan_feedback(kiln_home).frame.collect()
    assert sorted(stored["request_id"]) == ["r0", "r2", "r8"]
    human = cli("feedback", "import", str(bad), "--model", "shades", "--skip-invalid")
    assert human.exit_code == 0 and "refused 6 invalid row(s)" in " ".join(human.stdout.split())


def test_feedback_import_checks_labels_against_the_model_column(
    cli: Any, kiln_home: Path, tmp_path: Path
) -> None:
    prepare(kiln_home, tmp_path, 0.5)
    labels = tmp_path / "labels.csv"
    # shades has 2 classes; 'other' is not registered: only the index rule applies to it.
    # 'No/Model' cannot be a model's name at all.
    labels.write_text(
        "request_id,label,model\nr0,1,shades\nr1,2,shades\nr2,7,other\nr3,0,No/Model\n"
    )
    result = cli("feedback", "import", str(labels), "--skip-invalid", "--json")
    assert result.exit_code == 0, result.stderr
    imported = result.json()
    assert imported["rows"] == 2 and imported["refused"] == 2
    first, second = imported["refused_examples"]
    assert first["request_id"] == "r1" and "valid labels are 0-1" in first["reason"]
    assert second["request_id"] == "r3" and "not a valid model name" in second["reason"]
    assert imported["unchecked_models"] == ["other"]
    refused = cli("feedback", "import", str(labels))
    assert refused.exit_code == 2
    message = " ".join(refused.stderr.split())
    assert "line 3: label 2 is out of range" in message and "(request 'r1')" in message


@pytest.mark.parametrize(
    ("label", "reason"),
    [
        ("9223372036854775808", "label 9223372036854775808 is out of range"),
        ("18446744073709551616", "label 18446744073709551616 is out of range"),
        ("NaN", "label 'NaN' is not a number"),
        ("inf", "label 'inf' is not a number"),
        ("1e30", "label 1e30 is out of range"),
    ],
)
def test_feedback_import_huge_or_nan_labels_are_user_errors(
    cli: Any, kiln_home: Path, tmp_path: Path, label: str, reason: str
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"request_id,label\nr0,1\nr1,{label}\n")
    result = cli("feedback", "import", str(labels))
    assert result.exit_code == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "internal error" not in message and f"line 3: {reason}" in message
    result = cli("feedback", "import", str(labels), "--json")
    assert result.exit_code == 2


def test_feedback_import_of_a_header_only_file_says_it_has_no_rows(
    cli: Any, kiln_home: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n")
    result = cli("feedback", "import", str(labels))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "has a header but no rows" in message and "String" not in message
    labels.write_text("")
    result = cli("feedback", "import", str(labels))
    assert result.exit_code == 2 and "is empty" in result.stderr


def test_a_part_file_damaged_in_the_middle_is_reported_by_name_and_skipped(
    cli: Any, kiln_home: Path, tmp_path: Path
) -> None:
    """2 KB of random bytes in the middle of a part file, footer intact: without page
    checksums this changed the logged inputs without a word."""
    prepare(kiln_home, tmp_path, 0.5)  # one part file of 300 requests
    (damaged,) = (kiln_home / "traffic").rglob("part-*.parquet")
    ts = int((datetime.now(UTC) - timedelta(minutes=10)).timestamp() * 1e6)
    x = images(50, 9, 0.5)
    with TrafficLogger(kiln_home, TrafficSettings(flush_interval_s=60)) as logger:
        for i, (xi, si) in enumerate(zip(x, classify(x), strict=True)):
            logger.log(TrafficRecord(f"s{i}", ts + i, "shades", 1, 300, input=xi[None],
                                     output=si[None]))  # fmt: skip
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2048] = np.random.default_rng(0).bytes(2048)
    damaged.write_bytes(bytes(data))

    for command in (("traffic", "stats", "shades"), ("evaluate", "shades")):
        result = cli(*command, "--json")
        assert result.exit_code == 0, result.stderr
        report = result.json()
        assert report["requests"] == 50  # the intact file is read
        assert report["skipped_file_count"] == 1
        assert "damaged" in report["skipped_files"][str(damaged)]
        human = cli(*command)
        assert human.exit_code == 0
        assert "skipped 1 unreadable or damaged file(s)" in " ".join(human.stdout.split())
        assert str(damaged) in human.stdout.replace("\n", "")
    # A process of its own, as a user runs it: the warning names the file on stderr.
    alone = run_kiln("traffic", "stats", "shades", "--json", env={"KILN_HOME": str(kiln_home)})
    assert alone.exit_code == 0 and str(damaged) in alone.stderr and "CRC" in alone.stderr
