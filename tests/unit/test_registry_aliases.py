"""Aliases in the registry, on a real SQLite file: promotion, gates, rollback, the history and
what it answers, and the versions an alias protects from deletion."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import kiln.registry
from kiln.errors import (
    AliasNotFound,
    AliasUnchanged,
    GateFailed,
    InvalidArgument,
    InvalidReference,
    NothingToRollBack,
    VersionInUse,
    VersionNotFound,
)
from kiln.registry import Registry
from tests.unit.conftest import Checkpoint, Clock, register

pytestmark = pytest.mark.both_registries


def test_promote_and_resolve_alias(registry: Registry, make_checkpoint: Checkpoint) -> None:
    v1 = register(registry, make_checkpoint, accuracy=0.90)
    v2 = register(registry, make_checkpoint, accuracy=0.93)
    first = registry.promote(v1.ref, actor="ana", reason="first model")
    assert (first.from_version, first.to_version, first.action) == (None, 1, "promote")
    assert registry.resolve("digits") == v1
    assert registry.resolve("digits@production") == v1
    move = registry.promote("digits:2")
    assert (move.from_version, move.to_version) == (1, 2)
    assert move.gate is not None and move.gate.passed and not move.forced
    assert move.actor  # the OS user by default
    assert registry.resolve("digits") == v2
    registry.promote("digits@production", "candidate")  # an alias reference works too
    assert registry.aliases("digits") == {"candidate": 2, "production": 2}
    with pytest.raises(AliasUnchanged, match="already points at digits:2"):
        registry.promote("digits:2")
    with pytest.raises(InvalidReference, match="not a valid alias name"):
        registry.promote("digits:1", "Prod!")


def test_accuracy_gate_refuses_a_worse_candidate(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    register(registry, make_checkpoint, accuracy=0.95)
    register(registry, make_checkpoint, accuracy=0.90)
    register(registry, make_checkpoint, accuracy=0.947)  # within the default 0.005
    registry.promote("digits:1")
    with pytest.raises(GateFailed) as err:
        registry.promote("digits:2", reason="try")
    message = str(err.value)
    assert "0.9000" in message and "0.9500" in message and "-0.0500" in message
    assert "use --force to override" in message
    assert registry.resolve("digits").version == 1
    assert len(registry.history("digits")) == 1  # a refused promotion moves nothing
    assert registry.promote("digits:3").gate.passed  # type: ignore[union-attr]
    forced = registry.promote("digits:2", force=True, reason="hotfix")
    assert forced.forced
    assert forced.gate is not None and not forced.gate.passed and forced.gate.forced
    stored = registry.history("digits")[-1]
    assert stored == forced
    assert stored.gate is not None
    [result] = stored.gate.results
    assert result.numbers["candidate"] == 0.90
    assert result.numbers["current"] == 0.947


def test_custom_gates_plug_into_promote(registry: Registry, make_checkpoint: Checkpoint) -> None:
    register(registry, make_checkpoint)

    class Always:
        def __init__(self, answer: bool) -> None:
            self.answer = answer

        @property
        def name(self) -> str:
            return f"always-{self.answer}"

        def __call__(self, context: kiln.registry.GateContext) -> kiln.registry.GateResult:
            assert context.candidate.ref == "digits:1"
            return kiln.registry.GateResult(self.name, self.answer, {"x": 1.0}, "said so")

    with pytest.raises(GateFailed, match="always-False: said so"):
        registry.promote("digits:1", gates=[Always(True), Always(False)])
    move = registry.promote("digits:1", gates=[Always(True)])
    assert move.gate is not None
    assert [r.gate for r in move.gate.results] == ["always-True"]
    assert isinstance(Always(True), kiln.registry.Gate)


def test_rollback_undoes_promotions_in_order(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    for _ in range(4):
        register(registry, make_checkpoint)
    for v in (1, 2, 3):
        registry.promote(f"digits:{v}")
    assert registry.rollback("digits").to_version == 2
    registry.promote("digits:4")
    back = registry.rollback("digits", reason="bad latency")
    assert (back.from_version, back.to_version, back.action) == (4, 2, "rollback")
    assert back.reason == "bad latency" and back.gate is None
    assert registry.rollback("digits").to_version == 1
    with pytest.raises(NothingToRollBack, match="no earlier version"):
        registry.rollback("digits")
    with pytest.raises(AliasNotFound):
        registry.rollback("digits", "candidate")


def test_rollback_to_a_deleted_version_is_refused(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    register(registry, make_checkpoint)
    register(registry, make_checkpoint)
    registry.promote("digits:1")
    registry.promote("digits:2")
    registry.delete_version("digits", 1)
    with pytest.raises(NothingToRollBack, match="digits:1: that version was deleted"):
        registry.rollback("digits")


def test_history_is_complete_and_answers_what_served_when(
    registry: Registry, make_checkpoint: Checkpoint, clock: Clock
) -> None:
    for _ in range(3):
        register(registry, make_checkpoint)
    t0 = clock.now
    registry.promote("digits:1", actor="ana", reason="launch")
    t1 = clock.advance(10)
    registry.promote("digits:1", "candidate", actor="bo")
    t2 = clock.advance(10)
    registry.promote("digits:2", actor="ana", reason="retrained")
    t3 = clock.advance(10)
    registry.promote("digits:3", force=True, gates=[])
    t4 = clock.advance(10)
    registry.rollback("digits", actor="oncall", reason="errors")
    moves = registry.history("digits")
    assert [(m.alias, m.from_version, m.to_version, m.action) for m in moves] == [
        ("production", None, 1, "promote"),
        ("candidate", None, 1, "promote"),
        ("production", 1, 2, "promote"),
        ("production", 2, 3, "promote"),
        ("production", 3, 2, "rollback"),
    ]
    assert [m.at for m in moves] == [t0, t1, t2, t3, t4]
    assert [m.actor for m in moves][:3] == ["ana", "bo", "ana"]
    assert moves[0].reason == "launch"
    assert not moves[3].forced  # forced only means "a gate failed and was overridden"
    assert [m.alias for m in registry.history("digits", "candidate")] == ["candidate"]
    at = registry.alias_at
    assert at("digits", "production", t0 - timedelta(seconds=1)) is None
    assert at("digits", "production", t0) == 1
    assert at("digits", "production", t2 + timedelta(minutes=5)) == 2
    assert at("digits", "production", t3 + timedelta(minutes=5)) == 3
    assert at("digits", "production", t4 + timedelta(days=1)) == 2
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        at("digits", "production", datetime(2026, 11, 23, 14, 2))


def test_delete_is_refused_while_an_alias_points_at_it(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    register(registry, make_checkpoint)
    register(registry, make_checkpoint)
    registry.promote("digits:1")
    registry.promote("digits:1", "candidate")
    with pytest.raises(VersionInUse) as err:
        registry.delete_version("digits", 1)
    assert "alias 'candidate', 'production' points at it" in str(err.value)
    assert "kiln promote digits:OTHER --alias candidate" in str(err.value)
    assert registry.resolve("digits:1").version == 1
    deleted = registry.delete_version("digits", 2)
    assert deleted.version == 2
    assert registry.artifacts("digits", 1)  # the other version is untouched
    with pytest.raises(VersionNotFound):
        registry.delete_version("digits", 2)
