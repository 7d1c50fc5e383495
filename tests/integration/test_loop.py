"""Retraining from labelled traffic and `kiln loop`, on real models, registries and Parquet.

Traffic is written the way servers write it (TrafficLogger / FeedbackWriter into KILN_HOME):
the test of serving itself lives with the servers and in the `kiln demo` end-to-end test.

Each KILN_HOME is built once per module (training is the slow part) and never changed: every
test works on its own copy, so the tests pass alone and in any order.
"""

from __future__ import annotations

import re
import shutil
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
from kiln.evaluate.labelled import holdout_mask
from kiln.loop.retrain import RetrainOptions, RetrainResult, retrain
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
def labelled_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits:1 (split with seed 1) in production, and the seed-0 digits test split sent to
    it, every request labelled. Tests never change it: they take a copy (`home`)."""
    home = tmp_path_factory.mktemp("labelled") / "kiln-home"
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        v1 = train_and_register(registry, settings, "digits", seed=1)
        registry.promote(f"digits:{v1}", "production", reason="first")
    digits = load_dataset("digits", settings)
    log_labelled_traffic(home, digits.test.x, digits.test.y, v1)
    return home


@pytest.fixture
def home(labelled_home: Path, kiln_home: Path) -> Path:
    """This test's own copy of `labelled_home`; KILN_HOME (and so `cli`) points at it."""
    shutil.copytree(labelled_home, kiln_home)
    return kiln_home


def retrain_digits(home: Path, epochs: int) -> tuple[RetrainResult, dict[str, Any]]:
    """`retrain` as `kiln retrain digits --min-labels 50` runs it; the result, and the record
    the new version's config keeps of it."""
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        result = retrain(
            registry, "digits", settings,
            RetrainOptions(min_labels=50, epochs=epochs, show_progress=False),
        )  # fmt: skip
        info = registry.get_version("digits", result.version.version).config["retrain"]
    return result, info


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
    result, info = retrain_digits(home, epochs=2)
    v2 = result.version
    assert v2.lineage is not None and v2.lineage.parent_version == 1
    assert v2.config["retrain"] == info
    assert info["parent"] == "digits:1"
    assert info["labels"] == result.labels == 179  # the digits test split, de-duplicated
    # v1 was split with seed 1: the seed-0 test digits sent include some of its own.
    own_test = load_dataset("digits", settings, seed=1).test.x
    sent = load_dataset("digits", settings, seed=0).test.x
    overlap = len(_digests(own_test) & _digests(sent))
    assert 0 < overlap < 179
    assert info["excluded_heldout"] == result.excluded_heldout == overlap
    assert info["trained_on"] + info["held_out"] + info["excluded_heldout"] == info["labels"]
    with kiln.registry.open(settings=settings) as registry:
        assert registry.aliases("digits")["candidate"] == v2.version
        assert registry.aliases("digits")["production"] == 1
        kinds = {a.kind.value for a in registry.artifacts("digits", v2.version)}
    assert "onnxruntime" in kinds


def test_loop_retrains_once_then_waits_for_new_labels(home: Path) -> None:
    settings = Settings(home=home)
    # More labelled traffic (another split's test digits): the first round learns from all.
    digits = load_dataset("digits", settings, seed=5)
    log_labelled_traffic(home, digits.test.x, digits.test.y, 1)
    policy = LoopPolicy(min_labels=50, min_accuracy=0.99, approve="manual")
    with kiln.registry.open(settings=settings) as registry:
        first = run_loop(registry, "digits", settings, policy, once=True)[0]
        assert first.action == "awaiting-approval", first.message
        assert first.retrain is not None and first.retrain["excluded_heldout"] >= 0
        assert f"{first.retrain['excluded_heldout']} excluded" in first.message
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


def test_cli_reports_too_few_labels_with_exit_2(home: Path, cli: Any) -> None:
    result = cli("retrain", "digits", "--min-labels", "100000")
    assert result.exit_code == 2
    assert "labelled requests" in " ".join(result.stderr.split())


def _digests(x: np.ndarray) -> set[bytes]:
    """Each sample's float32 values as bytes: the content the traffic log holds."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return {row.tobytes() for row in flat}


@pytest.fixture(scope="module")
def heldout_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """v1 in production, and labelled traffic that partly repeats v1's own test split.

    - 60 test-split digits, sent as float64 (the log stores float32), 10 of them sent twice;
    - 60 other test-split digits at half brightness: close to held-out samples, not equal;
    - 100 training-split digits.

    Tests never change it: they take a copy (`heldout_traffic`).
    """
    home = tmp_path_factory.mktemp("heldout") / "kiln-home"
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        v1 = train_and_register(registry, settings, "digits", seed=0)
        registry.promote(f"digits:{v1}", "production", reason="first")
    parent = load_dataset("digits", settings, seed=0)  # v1's data set and split
    test = parent.test
    log_labelled_traffic(home, test.x[:60].astype(np.float64), test.y[:60], v1)
    log_labelled_traffic(home, test.x[:10], test.y[:10], v1)
    dimmed = test.x[60:120] * np.float32(0.5)
    dimmed_ids = log_labelled_traffic(home, dimmed, test.y[60:120], v1)
    log_labelled_traffic(home, parent.train.x[:100], parent.train.y[:100], v1)
    return home, {"test": test, "dimmed": dimmed, "dimmed_ids": dimmed_ids}


@pytest.fixture
def heldout_traffic(
    heldout_source: tuple[Path, dict[str, Any]], kiln_home: Path
) -> tuple[Path, dict[str, Any]]:
    """This test's own copy of `heldout_source`; KILN_HOME (and so `cli`) points at it."""
    source, sent = heldout_source
    shutil.copytree(source, kiln_home)
    return kiln_home, sent


def test_retrain_excludes_requests_equal_to_held_out_samples(
    heldout_traffic: tuple[Path, dict[str, Any]],
) -> None:
    home, sent = heldout_traffic
    result, info = retrain_digits(home, epochs=1)
    assert result.labels == 220  # 60 + 60 + 100 distinct inputs
    assert result.excluded_heldout == 60
    assert result.trained_on + result.held_out + result.excluded_heldout == result.labels
    assert info["excluded_heldout"] == 60
    assert result.to_dict()["excluded_heldout"] == 60
    learned = _digests(result.dataset.train.x) | _digests(result.dataset.val.x)
    assert not _digests(sent["test"].x) & learned  # the test split stays held out
    # Near the held-out samples is not equal to them: the dimmed digits were learned from.
    learnable = int((~holdout_mask(sent["dimmed_ids"])).sum())
    assert len(_digests(sent["dimmed"]) & learned) == learnable
    # The version's own test accuracy is measured on that untouched split.
    assert len(result.dataset.test) == len(sent["test"])


def test_cli_retrain_says_how_many_it_excluded(
    heldout_traffic: tuple[Path, dict[str, Any]], cli: Any
) -> None:
    shown = cli("retrain", "digits", "--min-labels", "50", "--epochs", "1", "--no-progress")
    assert shown.exit_code == 0, shown.stderr
    # The table's cells wrap: read it as words, without its borders.
    text = " ".join(re.sub(r"[\u2500-\u257f]", " ", shown.stdout).split())
    assert "60 excluded: inputs equal to samples of digits:1's held-out test split" in text
    payload = cli("retrain", "digits", "--min-labels", "50", "--epochs", "1", "--json").json()
    assert payload["excluded_heldout"] == 60
    assert payload["labels"] == 220
