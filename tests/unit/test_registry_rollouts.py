"""Rollout state in the registry, on a real SQLite file: set, poll, history, refusals, migration."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import kiln.registry
from kiln.errors import InvalidArgument, InvalidReference, ModelNotFound, RolloutRefused
from kiln.registry import Registry, RolloutMode
from kiln.registry import schema as registry_schema
from kiln.settings import Settings
from tests.unit.conftest import Clock

pytestmark = pytest.mark.both_registries


@pytest.fixture
def add_version(registry: Registry, tmp_path: Path) -> Callable[..., int]:
    """Register a version of a model (with a stand-in engine unless told not to)."""
    counter = itertools.count()

    def add(name: str = "digits", *, engine: bool = True) -> int:
        folder = tmp_path / "files" / str(next(counter))
        folder.mkdir(parents=True)
        checkpoint = folder / "model.safetensors"
        checkpoint.write_bytes(os.urandom(64))
        version = registry.register_version(name, checkpoint=checkpoint, config={}, metrics={})
        if engine:
            onnx = folder / "model.onnx"
            onnx.write_bytes(os.urandom(64))
            registry.add_artifact(name, version.version, kind="onnxruntime", path=onnx)
        return version.version

    return add


@pytest.fixture
def two_versions(registry: Registry, add_version: Callable[..., int]) -> tuple[int, int]:
    """digits:1 in production, digits:2 as candidate."""
    production, candidate = add_version(), add_version()
    registry.promote(f"digits:{production}", gates=[])
    registry.promote(f"digits:{candidate}", "candidate", gates=[])
    return production, candidate


def _rows(registry: Registry) -> tuple[int, int]:
    with registry.db.connect() as conn:
        state = conn.execute(sa.select(sa.func.count()).select_from(registry_schema.rollouts))
        changes = sa.select(sa.func.count()).select_from(registry_schema.rollout_history)
        return state.scalar_one(), conn.execute(changes).scalar_one()


def test_a_model_without_a_rollout_is_off(
    registry: Registry, add_version: Callable[..., int]
) -> None:
    add_version()
    state = registry.rollout("digits")
    assert state.mode is RolloutMode.OFF and not state.active
    assert (state.percent, state.alias, state.version, state.updated_at) == (
        0.0,
        "candidate",
        None,
        None,
    )
    assert registry.rollout_history("digits") == []
    assert state.describe().startswith("off")


def test_canary_shadow_and_off_are_kept_with_their_history(
    registry: Registry, two_versions: tuple[int, int], clock: Clock
) -> None:
    production, candidate = two_versions
    started = clock.advance(1)
    state = registry.set_rollout("digits", "canary", percent=10, actor="ana", reason="try it")
    assert state.mode is RolloutMode.CANARY and state.active
    assert (state.percent, state.alias, state.version) == (10.0, "candidate", candidate)
    assert (state.actor, state.reason, state.updated_at) == ("ana", "try it", started)
    assert registry.rollout("digits") == state
    assert "10% of requests answered by digits@candidate (digits:2)" in state.describe()

    clock.advance(1)
    assert registry.set_rollout("digits", RolloutMode.CANARY, percent=25.5).percent == 25.5
    clock.advance(1)
    shadow = registry.set_rollout("digits", "shadow")
    assert (shadow.mode, shadow.percent, shadow.version) == (RolloutMode.SHADOW, 100.0, candidate)
    ended = clock.advance(1)
    off = registry.set_rollout("digits", "off", actor="bo", reason="done")
    assert (off.mode, off.percent, off.version, off.updated_at) == (
        RolloutMode.OFF,
        0.0,
        None,
        ended,
    )
    assert registry.rollout("digits") == off

    changes = registry.rollout_history("digits")
    assert [(c.mode.value, c.percent) for c in changes] == [
        ("canary", 10.0),
        ("canary", 25.5),
        ("shadow", 100.0),
        ("off", 0.0),
    ]
    assert {(c.candidate_version, c.production_version) for c in changes} == {
        (candidate, production)
    }
    assert [c.at for c in changes] == sorted(c.at for c in changes)
    assert (changes[0].actor, changes[0].reason) == ("ana", "try it")
    assert changes[-1].to_dict()["mode"] == "off"


def test_turning_off_what_is_off_writes_nothing(
    registry: Registry, two_versions: tuple[int, int]
) -> None:
    assert registry.set_rollout("digits", "off").mode is RolloutMode.OFF
    assert _rows(registry) == (0, 0)


def test_the_rollout_follows_its_alias(
    registry: Registry, two_versions: tuple[int, int], add_version: Callable[..., int]
) -> None:
    registry.set_rollout("digits", "canary", percent=5)
    newer = add_version()
    registry.promote(f"digits:{newer}", "candidate", gates=[])
    assert registry.rollout("digits").version == newer


def test_another_alias_can_name_the_second_version(
    registry: Registry, two_versions: tuple[int, int], add_version: Callable[..., int]
) -> None:
    staging = add_version()
    registry.promote(f"digits:{staging}", "staging", gates=[])
    state = registry.set_rollout("digits", "shadow", percent=50, alias="staging")
    assert (state.alias, state.version, state.percent) == ("staging", staging, 50.0)
    # off keeps the alias it ended, so the history says what was switched off
    assert registry.set_rollout("digits", "off").alias == "staging"
    assert registry.rollout_history("digits")[-1].alias == "staging"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mode": "canary"}, InvalidArgument, "a canary needs the share"),
        ({"mode": "canary", "percent": 0}, InvalidArgument, r"must be in \(0, 100\], got 0"),
        ({"mode": "canary", "percent": -5}, InvalidArgument, "got -5"),
        ({"mode": "shadow", "percent": 100.5}, InvalidArgument, "got 100.5"),
        ({"mode": "canary", "percent": float("nan")}, InvalidArgument, "got nan"),
        ({"mode": "off", "percent": 10}, InvalidArgument, "omit it"),
        ({"mode": "blue-green", "percent": 10}, InvalidArgument, "modes: off, canary, shadow"),
        ({"mode": "canary", "percent": 10, "alias": "bad alias"}, InvalidReference, "alias"),
        ({"name": "digit", "mode": "canary", "percent": 10}, ModelNotFound, "did you mean"),
        (
            {"mode": "canary", "percent": 10, "alias": "staging"},
            RolloutRefused,
            "digits has no staging version; run kiln retrain digits or "
            "kiln promote digits:N --alias staging",
        ),
        (
            {"mode": "shadow", "alias": "production"},
            RolloutRefused,
            "both point at digits:1; a shadow needs a second version",
        ),
    ],
)
def test_bad_rollouts_are_refused_and_write_nothing(
    registry: Registry,
    two_versions: tuple[int, int],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    call = {"name": "digits", **kwargs}
    name, mode = call.pop("name"), call.pop("mode")
    with pytest.raises(error, match=message):
        registry.set_rollout(name, mode, **call)
    assert _rows(registry) == (0, 0)
    assert registry.rollout("digits").mode is RolloutMode.OFF


def test_a_model_without_a_candidate_is_refused(
    registry: Registry, add_version: Callable[..., int]
) -> None:
    registry.promote(f"digits:{add_version()}", gates=[])
    with pytest.raises(RolloutRefused) as refused:
        registry.set_rollout("digits", "canary", percent=10)
    assert str(refused.value) == (
        "digits has no candidate version; run kiln retrain digits or "
        "kiln promote digits:N --alias candidate"
    )
    assert _rows(registry) == (0, 0)


def test_candidate_equal_to_production_is_refused(
    registry: Registry, add_version: Callable[..., int]
) -> None:
    version = add_version()
    registry.promote(f"digits:{version}", gates=[])
    registry.promote(f"digits:{version}", "candidate", gates=[])
    with pytest.raises(RolloutRefused, match="digits@candidate and digits@production both point"):
        registry.set_rollout("digits", "canary", percent=10)
    assert _rows(registry) == (0, 0)


def test_no_production_or_no_engine_is_refused(
    registry: Registry, add_version: Callable[..., int]
) -> None:
    registry.promote(f"digits:{add_version()}", "candidate", gates=[])
    with pytest.raises(RolloutRefused, match="no production version"):
        registry.set_rollout("digits", "shadow")
    registry.promote(f"digits:{add_version()}", gates=[])
    registry.promote(f"digits:{add_version(engine=False)}", "candidate", gates=[])
    with pytest.raises(RolloutRefused, match=r"digits:3 \(digits@candidate\) has no compiled"):
        registry.set_rollout("digits", "shadow")
    assert _rows(registry) == (0, 0)


def test_a_refused_change_keeps_the_running_rollout(
    registry: Registry, two_versions: tuple[int, int]
) -> None:
    running = registry.set_rollout("digits", "canary", percent=10)
    with pytest.raises(RolloutRefused):
        registry.set_rollout("digits", "canary", percent=50, alias="staging")
    with pytest.raises(InvalidArgument):
        registry.set_rollout("digits", "canary", percent=500)
    assert registry.rollout("digits") == running
    assert _rows(registry) == (1, 1)


def test_polling_is_one_statement(registry: Registry, two_versions: tuple[int, int]) -> None:
    registry.set_rollout("digits", "canary", percent=10)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    registry.rollout("digits")  # warm the connection pool
    event.listen(registry.db, "before_cursor_execute", record)
    try:
        assert registry.rollout("digits").version == two_versions[1]
    finally:
        event.remove(registry.db, "before_cursor_execute", record)
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")


def test_an_unknown_model_is_diagnosed(registry: Registry, add_version: Callable[..., int]) -> None:
    add_version()
    with pytest.raises(ModelNotFound, match="no model 'digit'; did you mean 'digits'"):
        registry.rollout("digit")
    with pytest.raises(ModelNotFound):
        registry.rollout_history("digit")


def test_a_version_1_registry_is_migrated(settings: Settings, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(os.urandom(64))
    engine_file = tmp_path / "model.onnx"
    engine_file.write_bytes(os.urandom(64))
    with kiln.registry.open(settings=settings) as registry:
        for _ in range(2):
            v = registry.register_version("digits", checkpoint=checkpoint, config={}, metrics={})
            registry.add_artifact("digits", v.version, kind="onnxruntime", path=engine_file)
        registry.promote("digits:1", gates=[])
        registry.promote("digits:2", "candidate", gates=[])
    # What schema version 1 was: the same tables without the rollout ones.
    engine = sa.create_engine(settings.resolved_registry_url)
    with engine.begin() as conn:
        registry_schema.rollout_history.drop(conn)
        registry_schema.rollouts.drop(conn)
        conn.execute(registry_schema.schema_version.update().values(version=1))
    engine.dispose()

    with kiln.registry.open(settings=settings) as registry:
        assert registry.resolve("digits").version == 1
        assert [m.to_version for m in registry.history("digits")] == [1, 2]
        assert registry.rollout("digits").mode is RolloutMode.OFF
        assert registry.set_rollout("digits", "canary", percent=10).version == 2
    engine = sa.create_engine(settings.resolved_registry_url)
    with engine.connect() as conn:
        version = sa.select(registry_schema.schema_version.c.version)
        assert conn.execute(version).scalar() == registry_schema.SCHEMA_VERSION == 2
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("rollout_history")}
        assert "ix_rollout_history_lookup" in indexes
    engine.dispose()
