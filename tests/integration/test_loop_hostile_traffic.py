"""`kiln loop NAME --once` over a traffic log that holds every kind of odd row: it evaluates,
retrains and judges the candidate on the rows it can use, and says what it left out.

The property test over the readers the loop uses (evaluation, the retraining reader) is
tests/unit/test_traffic_hostile_rows.py; this is the loop itself, once, through the real CLI
on a real trained model (it trains, so one case).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import kiln.registry
from kiln.data import load_dataset
from kiln.settings import Settings
from kiln.traffic import FEEDBACK_SCHEMA_V1, TRAFFIC_SCHEMA_V1, FeedbackWriter, TrafficLogger
from kiln.traffic import TrafficRecord as Record
from kiln.traffic.layout import write_part
from tests.integration.bento_harness import train_and_register

pytestmark = pytest.mark.slow


def log_hostile_traffic(home: Path, x: np.ndarray, y: np.ndarray, version: int) -> int:
    """Labelled one-sample requests of `x` (answered by a poor model), and among them: a
    refused BYTES request, a NaN input, inputs of the wrong width and of two samples, labels
    of 100000 and 2**62, and rows an older writer left (a shape without values, a shape that
    does not match its values). Returns how many labelled requests are usable."""
    now_us = time.time_ns() // 1000
    logits = np.zeros((len(x), 10), dtype=np.float32)
    logits[np.arange(len(x)), (y + np.arange(len(x))) % 10] = 1.0  # mostly wrong
    labels: dict[str, int] = {}
    with TrafficLogger(home) as logger:
        for i, sample in enumerate(x):
            logger.log(Record(f"ok-{i}", now_us - 10_000 + i, "digits", version, 500,
                              input=sample[None].copy(), output=logits[i : i + 1]))  # fmt: skip
            if i != 1:  # ok-1's label comes from an older Kiln, below
                labels[f"ok-{i}"] = int(y[i])
        odd = {
            "bytes": np.array([[b"not", b"floats"]], dtype=object),
            "nan": np.full((1, *x.shape[1:]), np.nan, dtype=np.float32),
            "wide": np.ones((1, 5), dtype=np.float32),
            "pair": np.concatenate([x[:1], x[:1]]),
        }
        for name, tensor in odd.items():
            refused = name == "bytes"
            logger.log(
                Record(f"{name}-1", now_us - 20_000, "digits", version, 100,
                       status="invalid_argument" if refused else "ok", input=tensor,
                       output=None if refused else logits[: len(tensor)])
            )  # fmt: skip
            labels[f"{name}-1"] = 1
    with FeedbackWriter(home) as feedback:
        for request_id, label in labels.items():
            feedback.add(request_id, label, model="digits")
        feedback.add("ok-0", 100_000, model="digits")  # a server that did not know the classes
    legacy = pl.DataFrame(
        {
            "request_id": ["legacy-missing", "legacy-mismatch"],
            "timestamp": [now_us - 30_000, now_us - 29_000],
            "model": "digits",
            "version": version,
            "route": "primary",
            "transport": "grpc",
            "input": [None, [0.5] * 7],
            "input_shape": [[1, *x.shape[1:]]] * 2,
            "output_shape": [[1, 10]] * 2,
            "scores": [[0.0] * 10] * 2,
            "prediction": 0,
            "confidence": 0.1,
            "latency_us": 100,
            "queue_us": None,
            "batch_size": 1,
            "status": "ok",
            "error": None,
        }
    ).with_columns(pl.from_epoch("timestamp", time_unit="us").dt.replace_time_zone("UTC"))
    day = datetime.now(UTC).date().isoformat()
    write_part(home / "traffic" / "model=digits" / f"date={day}",
               legacy.cast(dict(TRAFFIC_SCHEMA_V1)))  # type: ignore[arg-type]  # fmt: skip
    old_labels = pl.DataFrame(
        {
            "request_id": ["legacy-missing", "legacy-mismatch", "ok-1"],
            "label": [1, 2, 2**62],
            "received_at": now_us,
            "source": "file:old.csv",
            "model": "digits",
        },
        schema_overrides={"label": pl.Int64},
    ).with_columns(pl.from_epoch("received_at", time_unit="us").dt.replace_time_zone("UTC"))
    write_part(home / "feedback" / f"date={day}",
               old_labels.cast(dict(FEEDBACK_SCHEMA_V1)))  # type: ignore[arg-type]  # fmt: skip
    return len(x) - 2  # ok-0 and ok-1 carry labels out of range


def test_loop_once_over_a_log_of_odd_rows(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "kiln-home"
    monkeypatch.setenv("KILN_HOME", str(home))
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        v1 = train_and_register(registry, settings, "digits", seed=1)
        registry.promote(f"digits:{v1}", "production", reason="first")
    digits = load_dataset("digits", settings, seed=3)
    usable = log_hostile_traffic(home, digits.test.x, digits.test.y, v1)

    evaluated = cli("evaluate", "digits", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    skipped = evaluated.json()["skipped_rows"]
    assert skipped["labels_out_of_range"] == 1 and skipped["feedback_labels_invalid"] == 1
    assert skipped["inputs"] == {"missing": 1, "inconsistent": 1, "non_finite": 1,
                                 "wrong_width": 1}  # fmt: skip

    result = cli("loop", "digits", "--once", "--min-labels", "50", "--min-accuracy", "0.99",
                 "--approve", "auto", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (round_,) = result.json()["rounds"]
    assert round_["action"] in ("promoted", "refused-by-gates"), round_
    assert round_["candidate"] is not None
    # Retraining checks rows against the parent's classes and sample shape, and says so.
    assert round_["retrain"]["skipped_rows"] == {
        "label_out_of_range": 2, "inconsistent": 1, "missing": 1, "not_one_sample": 1,
        "non_finite": 1, "other_shape": 1,
    }  # fmt: skip
    with kiln.registry.open(settings=settings) as registry:
        candidate = registry.resolve(round_["candidate"])
        retrained = candidate.config["retrain"]
    assert retrained["labels"] <= usable and retrained["labels"] > usable // 2
