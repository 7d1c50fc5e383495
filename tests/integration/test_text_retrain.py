"""Retraining a text version from labelled text traffic, on a tiny real model: the parent's data
set (movie snippets, a user Parquet file so that it stays small) plus labelled product reviews
from the traffic log, with the held-out guard (texts equal to the parent's test split are left
out and counted), a new tokenizer trained on the new training set, compiled and registered."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import kiln.registry
from kiln.compile import CompileOptions, compile_version
from kiln.data import load_dataset
from kiln.evaluate.gates import GateThresholds, evaluation_gates
from kiln.loop.retrain import RetrainOptions, retrain
from kiln.registry import ArtifactKind, Registry
from kiln.settings import Settings
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord
from tests.integration.text_models import train_text_version

pytestmark = pytest.mark.slow

MODEL = "reviews"
NAMES = ("negative", "positive")


def movies_file(settings: Settings, path: Path) -> Path:
    """600 movie snippets as a user's text data set (text, label columns)."""
    movies = load_dataset("rotten-tomatoes", settings)
    labels = [NAMES[int(y)] for y in movies.train.y[:600]]
    pl.DataFrame({"text": list(movies.train.x[:600]), "label": labels}).write_parquet(path)
    return path


def log_labelled_texts(home: Path, texts: list[str], labels: list[int]) -> list[str]:
    """One labelled request per text, as a text server logs it (its string and counts)."""
    logger, feedback = TrafficLogger(home), FeedbackWriter(home)
    now_us = time.time_ns() // 1000 - 1_000_000
    ids = []
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        request_id = uuid.uuid4().hex
        logger.log(TrafficRecord(request_id, now_us + i, MODEL, 1, 400,
                                 output=np.zeros((1, 2), np.float32),
                                 texts=np.array([text.encode()], dtype=object),
                                 text_tokens=[len(text.split())], text_unknown=[0]))  # fmt: skip
        feedback.add(request_id, int(label), model=MODEL, source="file")
        ids.append(request_id)
    assert logger.close(30) and feedback.close(30)
    return ids


@pytest.fixture(scope="module")
def parent_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """reviews:1 in production, trained on the movie snippets file and compiled (the gates
    run its engine); tests take a copy."""
    root = tmp_path_factory.mktemp("text-parent")
    settings = Settings(home=root / "kiln-home")
    data = movies_file(settings, root / "movies.parquet")
    with kiln.registry.open(settings=settings) as registry:
        train_text_version(registry, settings, name=MODEL, alias="production",
                           dataset=str(data), epochs=1)  # fmt: skip
        compile_version(registry, f"{MODEL}:1", CompileOptions(targets=("onnxruntime",)), settings)
    return settings.home, data


@pytest.fixture
def parent(parent_home: tuple[Path, Path], kiln_home: Path) -> tuple[Settings, Path]:
    """This test's own copy of `parent_home` (KILN_HOME points at it) and the data file."""
    shutil.copytree(parent_home[0], kiln_home)
    return Settings(), parent_home[1]


def tokenizer_sha(registry: Registry, version: int) -> str:
    (artifact,) = registry.artifacts(MODEL, version, ArtifactKind.TOKENIZER)
    return artifact.sha256


def test_labelled_texts_retrain_a_text_version_with_a_new_tokenizer(
    parent: tuple[Settings, Path],
) -> None:
    settings, data = parent
    base = load_dataset(str(data), settings)  # the parent's split, as retraining reloads it
    foods = load_dataset("fine-foods", settings)
    new = [str(t) for t in foods.test.x[:120]]
    held_out = [str(t) for t in base.test.x[:15]]  # clients send test texts too
    log_labelled_texts(
        settings.home, new + held_out, [*foods.test.y[:120].tolist(), *base.test.y[:15].tolist()]
    )
    with kiln.registry.open(settings=settings) as registry:
        result = retrain(
            registry, MODEL, settings,
            RetrainOptions(since="1h", min_labels=50, epochs=1, show_progress=False),
        )  # fmt: skip
        v1, v2 = registry.get_version(MODEL, 1), result.version
        assert v2.version == 2 and v2.lineage is not None and v2.lineage.parent_version == 1
        # The guard: every test text sent was left out and counted, none was learned.
        assert result.labels == 135 and result.excluded_heldout == 15
        assert result.trained_on + result.held_out + result.excluded_heldout == 135
        trained = set(result.dataset.train.x.tolist())
        assert not trained & set(held_out) and not trained & set(base.test.x.tolist())
        # The labelled reviews learned from: 90% of them in training (10% validate).
        validating = max(1, result.trained_on // 10)
        assert len(trained & set(new)) == result.trained_on - validating
        assert set(base.train.x.tolist()) <= trained  # the parent's data, all of it
        assert v2.config["retrain"]["excluded_heldout"] == 15
        # Same builder and tokenizer settings; a new tokenizer, trained on the new set.
        assert v2.config["builder"] == v1.config["builder"] == "transformer"
        assert v2.config["builder_args"] == v1.config["builder_args"]
        for key in ("kind", "vocab_size", "max_length"):
            assert v2.config["text"][key] == v1.config["text"][key]
        assert v2.config["text"]["sha256"] != v1.config["text"]["sha256"]
        assert tokenizer_sha(registry, 2) == v2.config["text"]["sha256"]
        assert result.to_dict()["tokenizer"]["new"] is True
        assert "onnxruntime" in result.engines
        assert registry.resolve(f"{MODEL}@candidate").version == 2
        assert "text" in v2.config["reference"] and "inputs" not in v2.config["reference"]
        # The promotion gates run the text versions' engines on strings, each tokenised with
        # its own tokenizer: the test split's texts and the held-out labelled reviews.
        gates = evaluation_gates(
            registry, settings, GateThresholds(traffic_window="1h", min_traffic_samples=5)
        )
        move = registry.promote(v2.ref, "production", gates=gates, force=True)
        assert move.gate is not None
        results = {r.gate: r for r in move.gate.results}
        test_gate, traffic_gate = results["held-out-regression"], results["traffic-gain"]
        assert "could not evaluate" not in test_gate.message + traffic_gate.message
        assert test_gate.numbers["samples"] == len(base.test.x)
        # The held-out labelled reviews, and the test texts held out by request id.
        assert (traffic_gate.numbers["samples"] or 0) >= result.held_out
        assert traffic_gate.numbers["candidate"] is not None


def test_a_warm_start_keeps_the_parent_tokenizer(parent: tuple[Settings, Path]) -> None:
    settings, _ = parent
    foods = load_dataset("fine-foods", settings)
    log_labelled_texts(
        settings.home, [str(t) for t in foods.test.x[:60]], foods.test.y[:60].tolist()
    )
    with kiln.registry.open(settings=settings) as registry:
        options = RetrainOptions(
            since="1h", min_labels=20, epochs=1, warm_start=True, show_progress=False
        )
        result = retrain(registry, MODEL, settings, options)
        assert result.labels == 60 and result.excluded_heldout == 0
        assert tokenizer_sha(registry, 2) == tokenizer_sha(registry, 1)
        assert result.to_dict()["tokenizer"]["new"] is False
