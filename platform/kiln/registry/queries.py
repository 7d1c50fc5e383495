"""Reading the registry's tables: lookups that explain themselves, listings, rows to records.

Every lookup of something a user named either returns the row or raises the matching
`NotFound` with what does exist and what to run next. The hot path (`RESOLVE_ALIAS`,
`RESOLVE_VERSION`) is one indexed join; the diagnosis runs only when it finds nothing.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from kiln.errors import AliasNotFound, ModelNotFound, VersionNotFound, did_you_mean
from kiln.registry.records import (
    AliasMove,
    Artifact,
    ArtifactKind,
    GateDecision,
    Lineage,
    ModelSummary,
    ModelVersion,
)
from kiln.registry.references import check_version, format_version_ranges
from kiln.registry.schema import alias_history, aliases, artifacts, models, versions

AnyRow: TypeAlias = Row[*tuple[Any, ...]]

VERSION_COLUMNS = (
    models.c.name,
    versions.c.id,
    versions.c.version,
    versions.c.config,
    versions.c.metrics,
    versions.c.dataset,
    versions.c.data_fingerprint,
    versions.c.parent_version,
    versions.c.run_id,
    versions.c.git_commit,
    versions.c.description,
    versions.c.created_at,
)

RESOLVE_ALIAS = (
    sa.select(*VERSION_COLUMNS)
    .select_from(
        models.join(aliases, aliases.c.model_id == models.c.id).join(
            versions, versions.c.id == aliases.c.version_id
        )
    )
    .where(models.c.name == sa.bindparam("name"), aliases.c.name == sa.bindparam("alias"))
)

RESOLVE_VERSION = (
    sa.select(*VERSION_COLUMNS)
    .select_from(models.join(versions, versions.c.model_id == models.c.id))
    .where(models.c.name == sa.bindparam("name"), versions.c.version == sa.bindparam("version"))
)


RESOLVE_ALIAS_NUMBER = (
    sa.select(versions.c.version)
    .select_from(
        models.join(aliases, aliases.c.model_id == models.c.id).join(
            versions, versions.c.id == aliases.c.version_id
        )
    )
    .where(models.c.name == sa.bindparam("name"), aliases.c.name == sa.bindparam("alias"))
)

RESOLVE_VERSION_NUMBER = (
    sa.select(versions.c.version)
    .select_from(models.join(versions, versions.c.model_id == models.c.id))
    .where(models.c.name == sa.bindparam("name"), versions.c.version == sa.bindparam("version"))
)


def to_version(row: AnyRow) -> ModelVersion:
    """A row selected with `VERSION_COLUMNS` as a record (unpacked by position: listing 10,000
    versions spends most of its time here)."""
    (name, _pk, version, config, metrics, dataset, fingerprint, parent, run_id, commit,
     description, created_at) = row  # fmt: skip
    return ModelVersion(
        name,
        version,
        config,
        metrics,
        Lineage(dataset, fingerprint, parent, run_id, commit),
        description,
        created_at,
    )


def to_artifact(row: AnyRow, name: str, version: int) -> Artifact:
    return Artifact(
        name=name,
        version=version,
        kind=ArtifactKind(row.kind),
        sha256=row.sha256,
        size=row.size,
        filename=row.filename,
        target=json.loads(row.target),
        libraries=json.loads(row.libraries),
        report=json.loads(row.report),
        created_at=row.created_at,
    )


def to_move(row: AnyRow, name: str) -> AliasMove:
    return AliasMove(
        name=name,
        alias=row.alias,
        from_version=row.from_version,
        to_version=row.to_version,
        at=row.at,
        actor=row.actor,
        reason=row.reason,
        action=row.action,
        gate=GateDecision.from_dict(json.loads(row.gate)) if row.gate else None,
    )


def model_id(conn: Connection, name: str) -> int:
    """The model's id, or `ModelNotFound` with a suggestion."""
    found = conn.execute(sa.select(models.c.id).where(models.c.name == name)).scalar()
    if found is None:
        raise model_not_found(conn, name)
    return int(found)


def model_not_found(conn: Connection, name: str) -> ModelNotFound:
    names = list(conn.execute(sa.select(models.c.name).order_by(models.c.name)).scalars())
    if not names:
        return ModelNotFound(
            f"no model '{name}': the registry is empty; register one with kiln train --name {name}"
        )
    hint = did_you_mean(name, names)
    if hint:
        return ModelNotFound(f"no model '{name}'{hint}")
    shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
    return ModelNotFound(f"no model '{name}'; models: {shown} (kiln models list)")


def version_not_found(conn: Connection, model: int, name: str, version: int) -> VersionNotFound:
    numbers = list(
        conn.execute(sa.select(versions.c.version).where(versions.c.model_id == model)).scalars()
    )
    existing = f"versions: {format_version_ranges(numbers)}" if numbers else "it has no versions"
    return VersionNotFound(
        f"model '{name}' has no version {version}; {existing} (kiln models show {name})"
    )


def alias_not_found(conn: Connection, model: int, name: str, alias: str) -> AliasNotFound:
    names = list(
        conn.execute(
            sa.select(aliases.c.name).where(aliases.c.model_id == model).order_by(aliases.c.name)
        ).scalars()
    )
    if not names:
        return AliasNotFound(
            f"model '{name}' has no alias '{alias}' (it has none yet); "
            f"promote a version first: kiln promote {name}:VERSION --alias {alias}"
        )
    hint = did_you_mean(alias, names)
    listed = "" if hint else f"; aliases: {', '.join(names)}"
    return AliasNotFound(
        f"model '{name}' has no alias '{alias}'{hint}{listed} (kiln models show {name})"
    )


def version_row(conn: Connection, name: str, version: int) -> AnyRow:
    check_version(version)  # a number past int64 would overflow in the driver
    row = conn.execute(RESOLVE_VERSION, {"name": name, "version": version}).first()
    if row is None:
        raise version_not_found(conn, model_id(conn, name), name, version)
    return row


def alias_row(conn: Connection, name: str, alias: str) -> AnyRow:
    row = conn.execute(RESOLVE_ALIAS, {"name": name, "alias": alias}).first()
    if row is None:
        raise alias_not_found(conn, model_id(conn, name), name, alias)
    return row


def version_number(conn: Connection, name: str, version: int | None, alias: str) -> int:
    """The number a reference names, reading nothing else; the diagnosis on a miss."""
    if version is not None:
        check_version(version)
        found = conn.execute(RESOLVE_VERSION_NUMBER, {"name": name, "version": version}).scalar()
        if found is None:
            raise version_not_found(conn, model_id(conn, name), name, version)
    else:
        found = conn.execute(RESOLVE_ALIAS_NUMBER, {"name": name, "alias": alias}).scalar()
        if found is None:
            raise alias_not_found(conn, model_id(conn, name), name, alias)
    return int(found)


def alias_version(conn: Connection, model: int, alias: str) -> int | None:
    """The version number an alias points at now, or None."""
    found = conn.execute(
        sa.select(versions.c.version)
        .select_from(aliases.join(versions, versions.c.id == aliases.c.version_id))
        .where(aliases.c.model_id == model, aliases.c.name == alias)
    ).scalar()
    return None if found is None else int(found)


def artifact_rows(conn: Connection, version_id: int, kind: str | None = None) -> list[AnyRow]:
    query = sa.select(artifacts).where(artifacts.c.version_id == version_id)
    if kind is not None:
        query = query.where(artifacts.c.kind == kind)
    return list(conn.execute(query.order_by(artifacts.c.id)))


def history_rows(conn: Connection, model: int, alias: str | None) -> list[AnyRow]:
    query = sa.select(alias_history).where(alias_history.c.model_id == model)
    if alias is not None:
        query = query.where(alias_history.c.alias == alias)
    return list(conn.execute(query.order_by(alias_history.c.id)))


def version_id(conn: Connection, model: int, version: int) -> int | None:
    """The row id of version `version` of the model with id `model`, or None."""
    found = conn.execute(
        sa.select(versions.c.id).where(versions.c.model_id == model, versions.c.version == version)
    ).scalar()
    return None if found is None else int(found)


def newest_versions(conn: Connection, model: int, limit: int | None) -> list[ModelVersion]:
    """The model's versions, oldest first: all of them, or the newest `limit`."""
    query = (
        sa.select(*VERSION_COLUMNS)
        .select_from(models.join(versions, versions.c.model_id == models.c.id))
        .where(versions.c.model_id == model)
        .order_by(versions.c.version.desc())
        .limit(limit)
    )
    return [to_version(row) for row in reversed(conn.execute(query).all())]


def model_aliases(conn: Connection, model: int) -> dict[str, int]:
    """The model's aliases, by name, and the version number each points at."""
    rows = conn.execute(
        sa.select(aliases.c.name, versions.c.version)
        .select_from(aliases.join(versions, versions.c.id == aliases.c.version_id))
        .where(aliases.c.model_id == model)
        .order_by(aliases.c.name)
    )
    return {row.name: row.version for row in rows}


def aliases_pointing_at(conn: Connection, version_pk: int) -> list[str]:
    """The names of the aliases that point at the version with row id `version_pk`, sorted."""
    return sorted(
        conn.execute(sa.select(aliases.c.name).where(aliases.c.version_id == version_pk)).scalars()
    )


def same_artifact(
    conn: Connection, version_pk: int, kind: str, sha256: str, target_json: str
) -> AnyRow | None:
    """The version's artifact with these kind, bytes and target, if it has one."""
    return conn.execute(
        sa.select(artifacts).where(
            artifacts.c.version_id == version_pk,
            artifacts.c.kind == kind,
            artifacts.c.sha256 == sha256,
            artifacts.c.target == target_json,
        )
    ).first()


def artifact_row(conn: Connection, pk: int) -> AnyRow:
    return conn.execute(sa.select(artifacts).where(artifacts.c.id == pk)).one()


def model_artifacts(conn: Connection, model: int, name: str) -> dict[int, list[Artifact]]:
    """Every artifact of every version of the model, by version number, in one query."""
    rows = conn.execute(
        sa.select(artifacts, versions.c.version.label("number"))
        .select_from(artifacts.join(versions, versions.c.id == artifacts.c.version_id))
        .where(versions.c.model_id == model)
        .order_by(artifacts.c.id)
    )
    found: dict[int, list[Artifact]] = {}
    for row in rows:
        found.setdefault(row.number, []).append(to_artifact(row, name, row.number))
    return found


def referenced_blobs(conn: Connection) -> set[str]:
    """The sha256 of every blob an artifact row references."""
    return set(conn.execute(sa.select(artifacts.c.sha256).distinct()).scalars())


def summaries(conn: Connection, name: str | None) -> list[ModelSummary]:
    """Every model (or only `name`), by name, with its version count, latest version and
    aliases, in two queries."""
    counts = (
        sa.select(
            models.c.id,
            models.c.name,
            models.c.created_at,
            sa.func.count(versions.c.id).label("n_versions"),
            sa.func.max(versions.c.version).label("latest"),
        )
        .select_from(models.outerjoin(versions, versions.c.model_id == models.c.id))
        .group_by(models.c.id, models.c.name, models.c.created_at)
        .order_by(models.c.name)
    )
    pointing = (
        sa.select(aliases.c.model_id, aliases.c.name, versions.c.version)
        .select_from(aliases.join(versions, versions.c.id == aliases.c.version_id))
        .order_by(aliases.c.name)
    )
    if name is not None:
        counts = counts.where(models.c.name == name)
        pointing = pointing.join(models, models.c.id == aliases.c.model_id).where(
            models.c.name == name
        )
    pointers: dict[int, dict[str, int]] = {}
    for row in conn.execute(pointing):
        pointers.setdefault(row.model_id, {})[row.name] = row.version
    return [
        ModelSummary(
            name=row.name,
            created_at=row.created_at,
            version_count=row.n_versions,
            latest_version=row.latest,
            aliases=pointers.get(row.id, {}),
        )
        for row in conn.execute(counts)
    ]
