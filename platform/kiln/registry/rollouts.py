"""Rollouts: a model's canary or shadow state, its refusals and its history.

Functions here run inside a `Database` transaction; `Registry` owns the transactions and the
clock. The `rollouts` row is the state servers poll; every change to it writes one
`rollout_history` row in the same transaction. A refused change raises before anything is
written, and the transaction rolls back, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import math
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.errors import InvalidArgument, RolloutRefused
from kiln.registry import queries as q
from kiln.registry.records import ArtifactKind, Rollout, RolloutChange, RolloutMode
from kiln.registry.references import DEFAULT_ALIAS
from kiln.registry.schema import aliases, artifacts, models, rollout_history, rollouts, versions

DEFAULT_ROLLOUT_ALIAS = "candidate"
"""The alias that names the second version unless a rollout names another."""

# The poll: one statement, every join on a primary key or unique index. A model that never
# had a rollout still yields its row (mode NULL), so "off" costs no second query.
_STATE = (
    sa.select(
        rollouts.c.mode,
        rollouts.c.percent,
        rollouts.c.alias,
        rollouts.c.actor,
        rollouts.c.reason,
        rollouts.c.updated_at,
        versions.c.version,
    )
    .select_from(
        models.outerjoin(rollouts, rollouts.c.model_id == models.c.id)
        .outerjoin(
            aliases, sa.and_(aliases.c.model_id == models.c.id, aliases.c.name == rollouts.c.alias)
        )
        .outerjoin(versions, versions.c.id == aliases.c.version_id)
    )
    .where(models.c.name == sa.bindparam("name"))
)


def state(conn: Connection, name: str) -> Rollout:
    """The model's rollout now (mode off when it never had one); `ModelNotFound` otherwise."""
    row = conn.execute(_STATE, {"name": name}).first()
    if row is None:
        raise q.model_not_found(conn, name)
    if row.mode is None:
        return Rollout(name, RolloutMode.OFF, 0.0, DEFAULT_ROLLOUT_ALIAS, None, None, "", None)
    mode = RolloutMode(row.mode)
    return Rollout(
        name=name,
        mode=mode,
        percent=float(row.percent),
        alias=row.alias,
        version=row.version if mode is not RolloutMode.OFF else None,
        actor=row.actor,
        reason=row.reason,
        updated_at=row.updated_at,
    )


def checked_percent(mode: RolloutMode, percent: float | None) -> float:
    """The percent a change to `mode` stores (0 when off, shadow defaults to 100); raises
    `InvalidArgument`, saying what to pass, for one that makes no sense."""
    if mode is RolloutMode.OFF:
        if percent is not None:
            raise InvalidArgument("a percent makes no sense when turning a rollout off; omit it")
        return 0.0
    if percent is None:
        if mode is RolloutMode.CANARY:
            raise InvalidArgument(
                "a canary needs the share of requests to send to the second version, "
                "e.g. percent=10 (kiln rollout NAME --canary 10)"
            )
        return 100.0
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise InvalidArgument(f"percent must be a number, got {percent!r}")
    if not (math.isfinite(percent) and 0 < percent <= 100):
        raise InvalidArgument(
            f"percent must be in (0, 100], got {percent:g}; to end a {mode.value}, turn the "
            "rollout off (kiln rollout NAME --off)"
        )
    return float(percent)


def change(
    conn: Connection,
    name: str,
    mode: RolloutMode,
    percent: float,
    alias: str,
    *,
    actor: str,
    reason: str,
    at: datetime,
) -> Rollout:
    """Set the model's rollout; return the new state.

    Canary and shadow need a production version and a different version at `alias` that has
    a compiled engine; `RolloutRefused` says which is missing and how to get it. Turning off
    a rollout that is already off writes nothing.
    """
    model = q.model_id(conn, name)
    production = q.alias_version(conn, model, DEFAULT_ALIAS)
    if mode is RolloutMode.OFF:
        now = state(conn, name)
        if not now.active:
            return now
        alias = now.alias
        second = q.alias_version(conn, model, alias)
    else:
        second = _second_version(conn, model, name, mode, alias, production)
    values = {
        "mode": mode.value,
        "percent": percent,
        "alias": alias,
        "actor": actor,
        "reason": reason,
        "updated_at": at,
    }
    updated = conn.execute(rollouts.update().where(rollouts.c.model_id == model).values(**values))
    if updated.rowcount == 0:  # the write lock is held: nobody else can insert it meanwhile
        conn.execute(rollouts.insert().values(model_id=model, **values))
    conn.execute(
        rollout_history.insert().values(
            model_id=model,
            mode=mode.value,
            percent=percent,
            alias=alias,
            candidate_version=second,
            production_version=production,
            at=at,
            actor=actor,
            reason=reason,
        )
    )
    return state(conn, name)


def history(conn: Connection, name: str) -> list[RolloutChange]:
    """Every rollout change of `name`, oldest first."""
    model = q.model_id(conn, name)
    rows = conn.execute(
        sa.select(rollout_history)
        .where(rollout_history.c.model_id == model)
        .order_by(rollout_history.c.id)
    )
    return [
        RolloutChange(
            name=name,
            mode=RolloutMode(row.mode),
            percent=float(row.percent),
            alias=row.alias,
            candidate_version=row.candidate_version,
            production_version=row.production_version,
            at=row.at,
            actor=row.actor,
            reason=row.reason,
        )
        for row in rows
    ]


def _second_version(
    conn: Connection, model: int, name: str, mode: RolloutMode, alias: str, production: int | None
) -> int:
    """The version `alias` names, after checking it can take part in a rollout."""
    if production is None:
        raise RolloutRefused(
            f"{name} has no production version for a {mode.value} to compare with; promote "
            f"one first: kiln promote {name}:N"
        )
    second = q.alias_version(conn, model, alias)
    if second is None:
        raise RolloutRefused(
            f"{name} has no {alias} version; run kiln retrain {name} or "
            f"kiln promote {name}:N --alias {alias}"
        )
    if second == production:
        raise RolloutRefused(
            f"{name}@{alias} and {name}@production both point at {name}:{second}; a "
            f"{mode.value} needs a second version: run kiln retrain {name} or "
            f"kiln promote {name}:N --alias {alias}"
        )
    engines = conn.execute(
        sa.select(sa.func.count())
        .select_from(artifacts.join(versions, versions.c.id == artifacts.c.version_id))
        .where(
            versions.c.model_id == model,
            versions.c.version == second,
            artifacts.c.kind.not_in([ArtifactKind.CHECKPOINT.value, ArtifactKind.TOKENIZER.value]),
        )
    ).scalar_one()
    if not engines:
        raise RolloutRefused(
            f"{name}:{second} ({name}@{alias}) has no compiled engine for the servers to load; "
            f"run kiln compile {name}:{second} first"
        )
    return second
