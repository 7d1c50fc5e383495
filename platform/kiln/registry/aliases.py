"""Alias moves: the gate decision, the move itself, rollback targets and the history.

Functions here run inside a `Database` transaction; `Registry` owns the transactions and the
clock. An alias row is the pointer; every change to it writes one `alias_history` row in the
same transaction, so the history is complete by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.errors import AliasUnchanged, GateFailed, NothingToRollBack, VersionNotFound
from kiln.registry import queries as q
from kiln.registry.gates import Gate, GateContext, run_gates
from kiln.registry.records import AliasMove, GateDecision, ModelVersion, canonical_json
from kiln.registry.schema import alias_history, aliases


def current(conn: Connection, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at now, or None."""
    row = conn.execute(q.RESOLVE_ALIAS, {"name": name, "alias": alias}).first()
    return None if row is None else q.to_version(row)


def decide(
    candidate: ModelVersion,
    alias: str,
    now_serving: ModelVersion | None,
    gates: Sequence[Gate],
    *,
    force: bool,
) -> GateDecision:
    """Run the gates for moving `alias` to `candidate`; raise unless the move may happen.

    Raises `AliasUnchanged` when the alias already points at the candidate, `GateFailed`
    (naming every failed gate with its numbers) when a gate fails and `force` is false.
    """
    if now_serving is not None and now_serving.version == candidate.version:
        raise AliasUnchanged(
            f"{candidate.name}@{alias} already points at {candidate.ref}; nothing to do"
        )
    decision = run_gates(
        gates, GateContext(candidate.name, alias, candidate, now_serving), force=force
    )
    if not decision.passed and not force:
        failed = "; ".join(f"{r.gate}: {r.message}" for r in decision.results if not r.passed)
        raise GateFailed(
            f"promotion of {candidate.ref} to {candidate.name}@{alias} refused: {failed}; "
            "use --force to override (the override is recorded in the history)"
        )
    return decision


def promote(
    conn: Connection,
    candidate: ModelVersion,
    alias: str,
    seen: int | None,
    *,
    actor: str,
    reason: str,
    decision: GateDecision,
    at: datetime,
) -> AliasMove | None:
    """Move `alias` to `candidate` if it still points at `seen` (what the gates judged
    against); return None otherwise, so the caller can run the gates again."""
    model = q.model_id(conn, candidate.name)
    if q.alias_version(conn, model, alias) != seen:
        return None
    row = conn.execute(
        q.RESOLVE_VERSION, {"name": candidate.name, "version": candidate.version}
    ).first()
    if row is None:
        raise VersionNotFound(f"{candidate.ref} was deleted while it was being promoted")
    return _write(
        conn, model, row.id, candidate.name, alias, seen, candidate.version,
        actor=actor, reason=reason, action="promote", decision=decision, at=at,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gates decided, and the version the alias pointed at when they looked."""

    seen: int | None
    decision: GateDecision


@dataclass(frozen=True, slots=True)
class Promotion:
    """One promotion as steps: what the alias points at (`serving`), the gates' verdict on
    that (`judge`), and the move if the alias has not moved since (`move`).

    `Registry.promote` runs the steps with the gates outside the write lock (an evaluation
    gate may take minutes) and, when the alias keeps moving under it, all of them under the
    lock (`locked`): the same steps either way.
    """

    candidate: ModelVersion
    alias: str
    gates: Sequence[Gate]
    force: bool
    actor: str
    reason: str
    clock: Callable[[], datetime]

    def serving(self, conn: Connection) -> ModelVersion | None:
        return current(conn, self.candidate.name, self.alias)

    def judge(self, now_serving: ModelVersion | None) -> Verdict:
        """Run the gates; raises what `decide` raises."""
        decision = decide(self.candidate, self.alias, now_serving, self.gates, force=self.force)
        return Verdict(None if now_serving is None else now_serving.version, decision)

    def move(self, conn: Connection, verdict: Verdict) -> AliasMove | None:
        """Move the alias if it still points where the gates looked; None otherwise."""
        return promote(
            conn, self.candidate, self.alias, verdict.seen,
            actor=self.actor, reason=self.reason, decision=verdict.decision, at=self.clock(),
        )  # fmt: skip

    def locked(self, conn: Connection) -> AliasMove:
        """Every step in one write transaction: nothing can move the alias meanwhile."""
        moved = self.move(conn, self.judge(self.serving(conn)))
        assert moved is not None  # the alias cannot have moved while we hold the lock
        return moved


def rollback(
    conn: Connection, name: str, alias: str, *, actor: str, reason: str, at: datetime
) -> AliasMove:
    """Move `alias` to where it pointed before its latest promotion still in effect.

    The history is replayed as a stack: a promotion pushes, a rollback pops; the target is
    the entry under the top. Raises `NothingToRollBack` when there is none or it was deleted.
    """
    model = q.model_id(conn, name)
    now_serving = q.alias_version(conn, model, alias)
    if now_serving is None:
        raise q.alias_not_found(conn, model, name, alias)
    stack: list[int] = []
    for row in q.history_rows(conn, model, alias):
        if row.action == "rollback":
            stack.pop()
        else:
            stack.append(row.to_version)
    if len(stack) < 2:
        raise NothingToRollBack(
            f"{name}@{alias} has no earlier version to roll back to "
            f"(kiln models history {name} --alias {alias}); to point it elsewhere use "
            f"kiln promote {name}:VERSION --alias {alias}"
        )
    target = stack[-2]
    found = conn.execute(q.RESOLVE_VERSION, {"name": name, "version": target}).first()
    if found is None:
        raise NothingToRollBack(
            f"cannot roll {name}@{alias} back to {name}:{target}: that version was "
            f"deleted; promote another one: kiln promote {name}:VERSION --alias {alias}"
        )
    return _write(
        conn, model, found.id, name, alias, now_serving, target,
        actor=actor, reason=reason or f"rollback from {name}:{now_serving}",
        action="rollback", decision=None, at=at,
    )  # fmt: skip


def history(conn: Connection, name: str, alias: str | None) -> list[AliasMove]:
    model = q.model_id(conn, name)
    return [q.to_move(row, name) for row in q.history_rows(conn, model, alias)]


def pointed_at(conn: Connection, name: str, alias: str, when: datetime) -> int | None:
    """The version `alias` pointed at at `when`: the target of the last move at or before it."""
    model = q.model_id(conn, name)
    found = conn.execute(
        sa.select(alias_history.c.to_version)
        .where(
            alias_history.c.model_id == model,
            alias_history.c.alias == alias,
            alias_history.c.at <= when,
        )
        .order_by(alias_history.c.at.desc(), alias_history.c.id.desc())
        .limit(1)
    ).scalar()
    return None if found is None else int(found)


def _write(  # noqa: PLR0913
    conn: Connection,
    model: int,
    version_pk: int,
    name: str,
    alias: str,
    from_version: int | None,
    to_version: int,
    *,
    actor: str,
    reason: str,
    action: str,
    decision: GateDecision | None,
    at: datetime,
) -> AliasMove:
    if from_version is None:
        conn.execute(
            aliases.insert().values(
                model_id=model, name=alias, version_id=version_pk, updated_at=at
            )
        )
    else:
        conn.execute(
            aliases.update()
            .where(aliases.c.model_id == model, aliases.c.name == alias)
            .values(version_id=version_pk, updated_at=at)
        )
    conn.execute(
        alias_history.insert().values(
            model_id=model,
            alias=alias,
            from_version=from_version,
            to_version=to_version,
            at=at,
            actor=actor,
            reason=reason,
            action=action,
            gate=canonical_json(decision.to_dict()) if decision else None,
            forced=decision is not None and decision.forced,
        )
    )
    return AliasMove(name, alias, from_version, to_version, at, actor, reason, action, decision)
