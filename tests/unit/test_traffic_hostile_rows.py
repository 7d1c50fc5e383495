"""Property: no mix of rows breaks a reader of the traffic log, and each says what it skipped.

Any mix of answered requests, refused ones (a BYTES tensor to a float model), requests whose
input was not logged, odd shapes (two samples, the wrong width, zero values, a scalar),
non-finite inputs, wide outputs, labels outside the model's classes (also beyond int64's
half range, written by an older Kiln), and rows of files from older or foreign writers (an
input shape without values, a shape that does not match its values, a prediction of 2**40, a
row without latency or status) goes through the real writers into a real KILN_HOME; then
`kiln traffic stats` and `kiln evaluate` (the real CLI) exit 0 with strict JSON whose counts
match what was written, and the retraining reader (`labelled_traffic`) returns only usable,
in-range rows and counts the others. `kiln loop --once` itself is driven over such a log in
tests/integration/test_loop_hostile_traffic.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln.registry
from kiln.data.profile import reference_profile
from kiln.evaluate.labelled import labelled_traffic
from kiln.settings import Settings
from kiln.traffic import (
    FEEDBACK_SCHEMA_V1,
    TRAFFIC_SCHEMA_V1,
    FeedbackWriter,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
)
from kiln.traffic.labels import MAX_LABEL
from kiln.traffic.layout import write_part
from tests.integration.test_traffic_cli import CLASSES, classify, images

MODEL = "shades"
SAMPLE = (1, 8, 8)
WRITTEN = (
    "valid", "shadow", "no_input", "bytes_refused", "failed", "two_samples", "wrong_width",
    "empty", "scalar", "non_finite", "wide_output",
)  # fmt: skip
LEGACY = ("legacy_missing", "legacy_mismatch", "legacy_negative", "legacy_prediction",
          "legacy_nulls")  # fmt: skip
WRITER_LABELS = (0, 1, 2, 4, 100_000, MAX_LABEL)
"""What `FeedbackWriter` takes without knowing the model's classes."""
OLD_LABELS = (-1, 7, 2**31, 2**62, 2**63 - 1)
"""What an older Kiln stored as it came."""

_train = np.concatenate([images(200, 1, 0.3), images(200, 2, 0.7)])
_held_out = np.concatenate([images(50, 3, 0.3), images(50, 4, 0.7)])
REFERENCE = reference_profile(_train, list(SAMPLE), classify(_held_out))


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@dataclass
class Row:
    """One logged request and what every reader should make of it."""

    request_id: str
    kind: str
    label: int | None = None
    label_from_old_kiln: bool = False
    answered: bool = True
    prediction: int | None = None
    width: int | None = None
    """Classes of the logged answer."""
    samples: int = 0
    """Input samples drift can use."""
    input_problem: str | None = None
    """What drift reports the input as, if it cannot use it."""
    one_sample: bool = False
    """Its input is one finite sample of some shape: the retraining reader can use it."""
    retrainable: bool = False
    """... of the model's sample shape."""


def written_row(kind: str, i: int, rng: np.random.Generator) -> tuple[Row, TrafficRecord]:
    x = np.clip(rng.normal(0.5, 0.2, (1, *SAMPLE)), 0, 1).astype(np.float32)
    out: np.ndarray | None = classify(x)
    record = TrafficRecord(f"{kind}-{i}", 0, MODEL, 1, 200 + i, input=x, output=out)
    row = Row(record.request_id, kind, samples=1, one_sample=True, retrainable=True)
    if kind == "shadow":
        record.route, row.one_sample, row.retrainable = "shadow", False, False
    elif kind == "no_input":
        record.input, row.samples, row.one_sample, row.retrainable = None, 0, False, False
    elif kind in ("bytes_refused", "failed"):
        record.status, record.error, out = "invalid_argument", "refused", None
        if kind == "bytes_refused":
            record.input, row.samples = np.array([[b"not", b"floats"]], dtype=object), 0
        row.answered, row.one_sample, row.retrainable = False, False, False
    elif kind == "two_samples":
        record.input = np.concatenate([x, x])
        out = classify(record.input)
        row.samples, row.one_sample, row.retrainable = 2, False, False
    elif kind == "wrong_width":
        record.input = rng.random((1, 5), dtype=np.float32)
        row.samples, row.input_problem, row.retrainable = 0, "wrong_width", False
    elif kind == "empty":
        record.input = np.zeros((1, 0), dtype=np.float32)
        row.samples, row.input_problem, row.one_sample, row.retrainable = 0, "empty", False, False
    elif kind == "scalar":
        record.input = np.array(3.0, dtype=np.float32)
        row.samples, row.input_problem, row.one_sample = 0, "wrong_width", False
        row.retrainable = False
    elif kind == "non_finite":
        x[0, 0, 0, 0] = np.nan
        row.samples, row.input_problem, row.one_sample = 0, "non_finite", False
        row.retrainable = False
    elif kind == "wide_output":
        out = rng.standard_normal((1, 5)).astype(np.float32)
    record.output = out
    if out is not None and out.shape[0] == 1:
        row.prediction, row.width = int(out.argmax()), out.shape[-1]
    return row, record


def legacy_row(kind: str, i: int) -> tuple[Row, dict[str, Any]]:
    """A row as an older or foreign writer left it (written straight to a part file)."""
    values: dict[str, Any] = {
        "request_id": f"{kind}-{i}", "model": MODEL, "version": 1, "route": "primary",
        "transport": "grpc", "input": None, "input_shape": None, "output_shape": [1, 2],
        "scores": [0.2, 0.8], "prediction": 1, "confidence": 0.8, "latency_us": 300 + i,
        "queue_us": 10, "batch_size": 1, "status": "ok", "error": None,
    }  # fmt: skip
    row = Row(values["request_id"], kind, prediction=1, width=2)
    if kind == "legacy_missing":
        values["input_shape"] = [1, *SAMPLE]
        row.input_problem = "missing"
    elif kind == "legacy_mismatch":
        values["input"], values["input_shape"] = [0.5] * 10, [1, *SAMPLE]
        row.input_problem = "inconsistent"
    elif kind == "legacy_negative":
        values["input"], values["input_shape"] = [0.5] * 64, [-1, 64]
        row.input_problem = "inconsistent"
    elif kind == "legacy_prediction":
        values.update(prediction=2**40, confidence=float("nan"), scores=None)
        values["output_shape"] = [1, 2**40]
        row.prediction, row.width = 2**40, 2**40
    elif kind == "legacy_nulls":
        values.update(version=None, route=None, latency_us=None, status=None, batch_size=None)
        values.update(prediction=None, confidence=None, output_shape=None, scores=None)
        row.answered, row.prediction, row.width = False, None, None
    return row, values


mixes = st.lists(
    st.tuples(
        st.sampled_from(WRITTEN + LEGACY),
        st.one_of(
            st.none(),
            st.sampled_from(WRITER_LABELS).map(lambda v: (v, False)),
            st.sampled_from(OLD_LABELS).map(lambda v: (v, True)),
        ),
    ),
    min_size=1,
    max_size=40,
)


def write_log(home: Path, mix: list[tuple[str, tuple[int, bool] | None]], seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    now_us = time.time_ns() // 1000
    rows: list[Row] = []
    records: list[TrafficRecord] = []
    legacy: list[dict[str, Any]] = []
    for i, (kind, label) in enumerate(mix):
        if kind in LEGACY:
            row, values = legacy_row(kind, i)
            legacy.append(values | {"timestamp": now_us - 60_000_000 + i})
        else:
            row, record = written_row(kind, i, rng)
            record.timestamp_us = now_us - 60_000_000 + i
            records.append(record)
        if label is not None:
            row.label, row.label_from_old_kiln = label
        rows.append(row)
    settings = TrafficSettings(flush_interval_s=60)
    with TrafficLogger(home, settings) as logger, FeedbackWriter(home, settings) as feedback:
        for record in records:
            assert logger.log(record)
        for row in rows:
            if row.label is not None and not row.label_from_old_kiln:
                feedback.add(row.request_id, row.label, model=MODEL)
    if legacy:
        frame = pl.DataFrame(legacy).with_columns(
            pl.from_epoch("timestamp", time_unit="us").dt.replace_time_zone("UTC")
        )
        day = frame["timestamp"][0].date().isoformat()
        write_part(
            home / "traffic" / f"model={MODEL}" / f"date={day}",
            frame.select(TRAFFIC_SCHEMA_V1.names()).cast(dict(TRAFFIC_SCHEMA_V1)),  # type: ignore[arg-type]
        )
    old = [r for r in rows if r.label is not None and r.label_from_old_kiln]
    if old:
        write_part(
            home / "feedback" / f"date={time.strftime('%Y-%m-%d', time.gmtime())}",
            pl.DataFrame(
                {
                    "request_id": [r.request_id for r in old],
                    "label": [r.label for r in old],
                    "received_at": [now_us] * len(old),
                    "source": ["file:old.csv"] * len(old),
                    "model": [MODEL] * len(old),
                },
                schema_overrides={"label": pl.Int64},
            )
            .with_columns(pl.from_epoch("received_at", time_unit="us").dt.replace_time_zone("UTC"))
            .cast(dict(FEEDBACK_SCHEMA_V1)),  # type: ignore[arg-type]
        )
    return rows


def register(home: Path) -> None:
    checkpoint = home.parent / "model.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"weights")
    config = {"class_names": CLASSES, "reference": REFERENCE}
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        registry.register_version(MODEL, checkpoint=checkpoint, config=config, metrics={})


def in_classes(value: int | None, classes: int | None) -> bool:
    return value is not None and classes is not None and 0 <= value < classes


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mix=mixes, seed=st.integers(0, 2**16))
def test_no_mix_of_rows_breaks_a_reader(
    mix: list[tuple[str, tuple[int, bool] | None]],
    seed: int,
    tmp_path: Path,
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / uuid.uuid4().hex / "home"
    monkeypatch.setenv("KILN_HOME", str(home))
    register(home)
    rows = write_log(home, mix, seed)

    stats = cli("traffic", "stats", MODEL, "--json")
    assert stats.exit_code == 0, stats.stderr
    s = strict_json(stats.stdout)
    assert s["requests"] == len(rows)
    assert s["errors"] == sum(not r.answered for r in rows)
    assert s["skipped_file_count"] == 0 and s["files_without_checksums"] == 0

    result = cli("evaluate", MODEL, "--json")
    assert result.exit_code == 0, result.stderr
    report = strict_json(result.stdout)
    skipped = report["skipped_rows"]
    classes = len(CLASSES)  # the registry's; every row is version 1 or has no version
    labelled = [r for r in rows if r.answered and r.prediction is not None and r.label is not None]
    usable = [r for r in labelled if 0 <= r.label <= MAX_LABEL]  # type: ignore[operator]
    assert skipped["feedback_labels_invalid"] == sum(
        r.label is not None and not 0 <= r.label <= MAX_LABEL for r in rows
    )
    assert skipped["labels_out_of_range"] == sum(not in_classes(r.label, classes) for r in usable)
    assert skipped["predictions_out_of_range"] == sum(
        in_classes(r.label, classes) and not in_classes(r.prediction, classes) for r in usable
    )
    assert report["labelled"] == sum(
        in_classes(r.label, classes) and in_classes(r.prediction, classes) for r in usable
    )
    (drift,) = report["drift"]["versions"] or [None]
    if drift is not None:
        with_version = [r for r in rows if r.kind != "legacy_nulls"]
        assert drift["inputs"]["samples"] == sum(r.samples for r in with_version)
        expected = Counter(r.input_problem for r in with_version if r.input_problem)
        assert drift["inputs"]["skipped"] == dict(expected)
        assert drift["predictions"]["skipped"] == sum(
            r.prediction is not None and r.answered and not in_classes(r.prediction, classes)
            for r in with_version
        )

    # Retraining's reader: told the model's classes and sample shape, exactly the rows that
    # fit; not told, rows of the most common shape with labels below their answer's width.
    candidates = [
        r
        for r in rows
        if r.label is not None
        and r.answered
        and r.kind not in ("shadow", "no_input", "legacy_prediction", "legacy_nulls")
    ]
    told = labelled_traffic(home, MODEL, num_classes=classes, sample_shape=SAMPLE)
    assert sorted(told.request_ids) == sorted(
        r.request_id for r in candidates if r.retrainable and in_classes(r.label, classes)
    )
    assert told.x.shape == (len(told), *SAMPLE) and np.isfinite(told.x).all()
    assert len(told) + sum(told.skipped.values()) == len(candidates)
    guessed = labelled_traffic(home, MODEL)
    assert np.isfinite(guessed.x).all()
    by_id = {r.request_id: r for r in rows}
    for request_id, y in zip(guessed.request_ids, guessed.y.tolist(), strict=True):
        row = by_id[request_id]
        assert row.one_sample and row.label == y and in_classes(y, row.width)
    assert len(guessed) + sum(guessed.skipped.values()) == len(candidates)
