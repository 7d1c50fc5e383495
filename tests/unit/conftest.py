"""Fixtures shared by the unit tests."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kiln.registry import Lineage, ModelVersion, Registry
from kiln.settings import Settings

Checkpoint = Callable[..., Path]


class Clock:
    """A controllable UTC clock, so times in the history are exact."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> datetime:
        self.now += timedelta(minutes=minutes)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(settings: Settings, clock: Clock) -> Iterator[Registry]:
    """A registry on a real SQLite file and blob store in this test's KILN_HOME, on `clock`."""
    home = settings.home.resolve()
    with Registry(settings.resolved_registry_url, home / "artifacts", clock=clock) as reg:
        yield reg


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Checkpoint:
    """Write a small file standing in for a safetensors checkpoint (distinct bytes per call)."""
    counter = itertools.count()

    def make(content: bytes | None = None, name: str = "model.safetensors") -> Path:
        folder = tmp_path / "checkpoints" / str(next(counter))
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(content if content is not None else os.urandom(64))
        return path

    return make


def register(
    registry: Registry, make_checkpoint: Checkpoint, accuracy: float = 0.9, name: str = "digits"
) -> ModelVersion:
    """Register a version of `name` with typical config, metrics and lineage."""
    return registry.register_version(
        name,
        checkpoint=make_checkpoint(),
        config={"arch": "cnn", "epochs": 3},
        metrics={"test_accuracy": accuracy, "test_loss": 0.3, "ece": 0.02},
        lineage=Lineage(dataset="mnist-5k", data_fingerprint="sha256:abc", run_id="r1"),
        description="a test version",
    )
