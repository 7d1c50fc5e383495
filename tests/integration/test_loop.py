"""Retraining from labelled traffic and `kiln loop`, on real models, registries and Parquet.

Traffic is written the way servers write it (TrafficLogger / FeedbackWriter into KILN_HOME):
the test of serving itself lives with the servers and in the `kiln demo` end-to-end test.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import kiln.registry
from kiln.data import load_dataset
from kiln.errors import FailedPrecondition
from kiln.loop.retrain import RetrainOptions, retrain
from kiln.loop.watch import LoopPolicy, run_loop
from kiln.registry import Lineage
from kiln.settings import Settings
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord
from kiln.train import TrainConfig, train
from tests.integration.bento_harness import train_and_register

pytestmark = pytest.mark.slow


def log_labelled_traffic(home: Path, x: np.ndarray, y: np.ndarray, version: int) -> list[str]:
    """Requests of one sample each, every one labelled, as a server and its users would."""
    logger, feedback = TrafficLogger(home), FeedbackWriter(home)
    ids = []
    now_us = time.time_ns() // 1000
    for i, (sample, label) in enumerate(zip(x, y, strict=True)):
        request_id = uuid.uuid4().hex
        logits = np.zeros((1, 10), dtype=np.float32)
        logits[0, (label + i) % 10] = 1.0  # some answers right, most wrong: a bad model
        logger.log(TrafficRecord(request_id, now_us - 1000 + i, "digits", version, 500,
                                 input=sample[None].copy(), output=logits))  # fmt: skip
        feedback.add(request_id, int(label), model="digits", source="file")
        ids.append(request_id)
    assert logger.close(30) and feedback.close(30)
    return ids


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("kiln-home")
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        v1 = train_and_register(registry, settings, "digits", seed=1)
        registry.promote(f"digits:{v1}", "production", reason="first")
    digits = load_dataset("digits", settings)
    log_labelled_traffic(home, digits.test.x, digits.test.y, v1)
    return home


def versions(home: Path) -> list[int]:
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        return [v.version for v in registry.list_versions("digits")]


def test_too_few_labels_is_refused_before_training(home: Path) -> None:
    before = versions(home)
    with (
        kiln.registry.open(settings=Settings(home=home)) as registry,
        pytest.raises(FailedPrecondition, match=r"only \d+ labelled requests .*\(--min-labels\)"),
    ):
        retrain(registry, "digits", Settings(home=home), RetrainOptions(min_labels=10_000))
    assert versions(home) == before


def test_retrain_registers_a_candidate_with_lineage(home: Path) -> None:
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        result = retrain(
            registry, "digits", settings,
            RetrainOptions(min_labels=50, epochs=2, show_progress=False),
        )  # fmt: skip
        v2 = result.version
        assert registry.aliases("digits")["candidate"] == v2.version
        assert registry.aliases("digits")["production"] == 1
        assert v2.lineage.parent_version == 1
        info = v2.config["retrain"]
        assert info["parent"] == "digits:1"
        assert info["labels"] == result.labels == 179  # the digits test split, de-duplicated
        assert info["trained_on"] + info["held_out"] == info["labels"]
        kinds = {a.kind.value for a in registry.artifacts("digits", v2.version)}
        assert "onnxruntime" in kinds


def test_loop_retrains_once_then_waits_for_new_labels(home: Path) -> None:
    settings = Settings(home=home)
    # New labelled traffic, after any retraining the tests before this one did.
    digits = load_dataset("digits", settings, seed=5)
    log_labelled_traffic(home, digits.test.x, digits.test.y, 1)
    policy = LoopPolicy(min_labels=50, min_accuracy=0.99, approve="manual")
    with kiln.registry.open(settings=settings) as registry:
        first = run_loop(registry, "digits", settings, policy, once=True)[0]
        assert first.action == "awaiting-approval", first.message
        assert any("accuracy" in r for r in first.reasons)
        candidate = registry.resolve("digits@candidate")
        assert first.candidate == candidate.ref
        assert registry.aliases("digits")["production"] == 1  # manual: nothing promoted
        second = run_loop(registry, "digits", settings, policy, once=True)[0]
    assert second.action == "waiting-for-labels", second.message


def test_a_parent_whose_data_set_is_gone(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    digits = load_dataset("digits", settings)
    parquet = tmp_path / "mine.parquet"
    x = np.concatenate([digits.train.x, digits.val.x, digits.test.x]).reshape(-1, 64)
    y = np.concatenate([digits.train.y, digits.val.y, digits.test.y])
    pl.DataFrame({"features": x.tolist(), "label": y}).write_parquet(parquet)
    run = train(TrainConfig(dataset=str(parquet), model="mlp", epochs=1), settings,
                show_progress=False)  # fmt: skip
    with kiln.registry.open(settings=settings) as registry:
        v = registry.register_version(
            "digits", checkpoint=run.checkpoint, config=run.config.model_dump(),
            metrics=run.config.metrics, lineage=Lineage(dataset=str(parquet)),
        )  # fmt: skip
        registry.promote(v.ref, "production", gates=[])
        parquet.unlink()
        with pytest.raises(FailedPrecondition, match=r"data set .* is not available"):
            retrain(registry, "digits", settings, RetrainOptions(min_labels=1))
        assert [m.version for m in registry.list_versions("digits")] == [v.version]


def test_cli_reports_too_few_labels_with_exit_2(home: Path, cli: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("KILN_HOME", str(home))
    result = cli("retrain", "digits", "--min-labels", "100000")
    assert result.exit_code == 2
    assert "labelled requests" in " ".join(result.stderr.split())
