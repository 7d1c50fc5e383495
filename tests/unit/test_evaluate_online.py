"""Online evaluation on a small fixture whose every number is computed by hand below."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from kiln.evaluate import Evaluation, VersionInfo, evaluate_traffic, render_html
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord, TrafficSettings, Window

NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = Window(NOW - timedelta(hours=1), NOW + timedelta(hours=1))  # feedback arrives "now"

# id: (version, route, class probabilities served, true label or None)
SERVED: dict[str, tuple[int, str, list[float], int | None]] = {
    "a1": (1, "primary", [0.9, 0.05, 0.05], 0),  # predicts 0 @0.9, right
    "a2": (1, "primary", [0.6, 0.3, 0.1], 1),  # predicts 0 @0.6, wrong
    "a3": (1, "primary", [0.1, 0.7, 0.2], 1),  # predicts 1 @0.7, right
    "a4": (1, "primary", [0.2, 0.2, 0.6], 2),  # predicts 2 @0.6, right
    "a5": (1, "primary", [0.1, 0.45, 0.45], 2),  # predicts 1 (first of the tie) @0.45, wrong
    "a6": (1, "primary", [0.3, 0.3, 0.4], None),  # no label
    "b1": (2, "canary", [0.2, 0.8, 0.0], 1),  # right
    "b2": (2, "canary", [0.5, 0.25, 0.25], 2),  # wrong
    "b3": (2, "canary", [0.5, 0.25, 0.25], None),
    "b4": (2, "canary", [0.1, 0.1, 0.8], None),
}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    tmp_path = tmp_path_factory.mktemp("evaluate")
    ts = int((NOW - timedelta(minutes=30)).timestamp() * 1e6)
    settings = TrafficSettings(flush_interval_s=60)
    with TrafficLogger(tmp_path, settings) as logger, FeedbackWriter(tmp_path, settings) as fb:
        for i, (rid, (version, route, probs, label)) in enumerate(SERVED.items()):
            out = np.array([probs], dtype=np.float32)
            record = TrafficRecord(rid, ts + i, "digits", version, 100 * (i + 1), route=route)
            record.output = out
            logger.log(record)
            if label is not None:
                fb.add(rid, label)
        # A failed request, labelled anyway: not answered, so not "labelled", but not unmatched.
        logger.log(TrafficRecord("f1", ts, "digits", 1, 50, status="invalid_argument", error="x"))
        fb.add("f1", 0)
        fb.add("ghost", 1)  # no such request: unmatched
        fb.add("a1", 2, model="letters")  # names another model: ignored for digits
    versions = {1: VersionInfo(1, ["zero", "one", "two"])}
    return evaluate_traffic(tmp_path, "digits", WINDOW, versions)


@pytest.fixture(scope="module")
def report(evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation as `kiln evaluate --json` prints it."""
    return evaluation.to_dict()


def test_totals_coverage_and_unmatched(report: dict[str, Any]) -> None:
    assert report["requests"] == 11 and report["answered"] == 10
    assert report["labelled"] == 7
    assert report["label_coverage"] == pytest.approx(7 / 10)
    assert report["feedback"]["unmatched"] == 1
    assert report["feedback"]["unmatched_examples"] == ["ghost"]


def test_accuracy_per_version_and_route(report: dict[str, Any]) -> None:
    rows = {(a["version"], a["route"]): a for a in report["accuracy"]}
    v1, v2 = rows[(1, "primary")], rows[(2, "canary")]
    assert (v1["requests"], v1["answered"], v1["labelled"], v1["correct"]) == (7, 6, 5, 3)
    assert v1["accuracy"] == pytest.approx(3 / 5)
    assert v1["label_coverage"] == pytest.approx(5 / 6)
    assert (v2["labelled"], v2["correct"]) == (2, 1)
    assert v2["accuracy"] == pytest.approx(1 / 2) and v2["label_coverage"] == pytest.approx(2 / 4)


def test_per_class_confusion_and_calibration(report: dict[str, Any]) -> None:
    v1 = next(v for v in report["versions"] if v["version"] == 1)
    assert [(c["name"], c["labelled"], c["accuracy"]) for c in v1["per_class"]] == [
        ("zero", 1, 1.0),
        ("one", 2, 0.5),
        ("two", 2, 0.5),
    ]
    # rows: truth, columns: prediction
    assert v1["confusion"]["matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    # 15 bins: {0.9} acc 1 | {0.6, 0.6} acc 0.5 | {0.7} acc 1 | {0.45} acc 0
    ece = (abs(1 - 0.9) + 2 * abs(0.5 - 0.6) + abs(1 - 0.7) + abs(0 - 0.45)) / 5
    assert v1["calibration"]["ece"] == pytest.approx(ece, abs=1e-6)
    assert sum(b["count"] for b in v1["calibration"]["bins"]) == 5
    v2 = next(v for v in report["versions"] if v["version"] == 2)
    assert v2["confusion"]["classes"] == ["0", "1", "2"]  # not in the registry: indices


def test_latency_and_time_series(report: dict[str, Any]) -> None:
    assert sum(p["labelled"] for p in report["accuracy_over_time"]) == 7
    latency = {(r["version"], r["route"]): r for r in report["latency"]}
    assert latency[(2, "canary")]["latency_p50_us"] == pytest.approx(800, rel=0.005)  # 700..1000


def test_versions_without_reference_say_so(report: dict[str, Any]) -> None:
    notes = {d["version"]: d.get("note", "") for d in report["drift"]["versions"]}
    assert "no reference profile" in notes[1] and "no reference profile" in notes[2]
    assert report["drift_detected"] is False


def test_html_report_is_self_contained(evaluation: Evaluation) -> None:
    page = render_html(evaluation)
    assert page.count("data:image/png;base64,") == 2  # accuracy and latency; no drift plot
    assert "<h2>Version 1: 5 labelled, accuracy 0.6000" in page
    assert "http://" not in page and "https://" not in page


def test_labels_and_predictions_are_checked_against_the_versions_classes(tmp_path: Any) -> None:
    """A label past the classes (the registry's for v1, the logged answer's width for v2,
    which the registry does not know) is counted, never sized by: a label of 2**62 and a
    prediction of 2**40 build no matrix of that size. A model of many classes gets the
    non-zero cells of its confusion matrix instead of all of them."""
    ts = int((NOW - timedelta(minutes=30)).timestamp() * 1e6)
    settings = TrafficSettings(flush_interval_s=60)
    with TrafficLogger(tmp_path, settings) as logger, FeedbackWriter(tmp_path, settings) as fb:
        for i, (version, width, label) in enumerate(
            [(1, 3, 0), (1, 3, 2), (1, 3, 3), (1, 3, 100_000), (2, 4, 3), (2, 4, 4), (3, 9, 8)]
        ):
            logits = np.zeros((1, width), dtype=np.float32)
            logits[0, i % width] = 5.0
            logger.log(TrafficRecord(f"q{i}", ts + i, "digits", version, 100, output=logits))
            fb.add(f"q{i}", label)
    versions = {1: VersionInfo(1, ["a", "b", "c"]), 3: VersionInfo(3, num_classes=5000)}
    evaluation = evaluate_traffic(tmp_path, "digits", WINDOW, versions)
    report = evaluation.to_dict()
    skipped = report["skipped_rows"]
    assert skipped["labels_out_of_range"] == 3  # 3 and 100000 for v1, 4 for v2
    assert sorted(e["request_id"] for e in skipped["out_of_range_examples"]) == [
        "q2", "q3", "q5",
    ]  # fmt: skip
    by_version = {v["version"]: v for v in report["versions"]}
    assert by_version[1]["labelled"] == 2 and len(by_version[1]["confusion"]["matrix"]) == 3
    assert by_version[2]["classes"] == 4 and by_version[2]["confusion"]["classes"][-1] == "3"
    wide = by_version[3]
    assert wide["classes"] == 5000 and wide["confusion"]["matrix"] is None
    assert wide["confusion"]["cells"] == [[8, 6, 1]]
    assert [c["class"] for c in wide["per_class"]] == [6, 8]
    page = render_html(evaluation)
    assert "label outside the version&#x27;s classes" in page and "non-zero cells" in page
