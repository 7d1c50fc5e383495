"""Versions and their artifacts as rows: numbering, inserting and deleting them.

Functions here run inside a `Database` write transaction; `Registry` owns the transactions,
the blob store and the clock. `register_version` and the bundle importer both create a model
on first use and insert a version through `ensure_model` and `insert_version`, so a version
is numbered one way whichever door it came in by.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.errors import VersionInUse
from kiln.registry import queries as q
from kiln.registry.blobs import StoredBlob
from kiln.registry.database import insert_row
from kiln.registry.records import Artifact, ArtifactKind, Lineage, ModelVersion, canonical_json
from kiln.registry.schema import artifacts, lineage_columns, models, versions


def ensure_model(conn: Connection, name: str, *, at: datetime) -> tuple[int, int]:
    """The model's row id and next version number, creating the model on first use."""
    model = conn.execute(
        sa.select(models.c.id, models.c.next_version).where(models.c.name == name)
    ).first()
    if model is None:
        created = insert_row(conn, models.insert().values(name=name, next_version=1, created_at=at))
        return created, 1
    return int(model.id), int(model.next_version)


def insert_version(conn: Connection, model: int, next_number: int, version: ModelVersion) -> int:
    """Insert `version` (its number included) as a row of the model with id `model`; return
    the row's id.

    The model's counter moves past the number, from `next_number` (what `ensure_model` said),
    so no later version can take it, even after this one is deleted.
    """
    conn.execute(
        models.update()
        .where(models.c.id == model)
        .values(next_version=max(next_number, version.version + 1))
    )
    return insert_row(
        conn,
        versions.insert().values(
            model_id=model,
            version=version.version,
            config=version.config_json,
            metrics=version.metrics_json,
            **lineage_columns(version.lineage),
            description=version.description,
            created_at=version.created_at,
        ),
    )


def insert_artifact(conn: Connection, version_pk: int, artifact: Artifact) -> int:
    """Insert `artifact` as a row of the version with id `version_pk`; return the row's id.

    Its own name and version are not stored (the version row says them): an imported
    artifact keeps its source's.
    """
    return insert_row(
        conn,
        artifacts.insert().values(
            version_id=version_pk,
            kind=artifact.kind.value,
            sha256=artifact.sha256,
            size=artifact.size,
            filename=artifact.filename,
            target=canonical_json(artifact.target),
            libraries=canonical_json(artifact.libraries),
            report=canonical_json(artifact.report),
            created_at=artifact.created_at,
        ),
    )


def register(  # noqa: PLR0913
    conn: Connection,
    name: str,
    checkpoint: StoredBlob,
    filename: str,
    *,
    config_json: str,
    metrics_json: str,
    lineage: Lineage,
    description: str,
    at: datetime,
    ensure_blob: Callable[[], None],
) -> ModelVersion:
    """Insert the model's next version with its checkpoint (created as `filename`); return it.

    `ensure_blob` stores the checkpoint's blob again if a gc removed it before this
    transaction took the lock. Raises `VersionNotFound` when the lineage's parent version
    does not exist.
    """
    model, number = ensure_model(conn, name, at=at)
    parent = lineage.parent_version
    if parent is not None and q.version_id(conn, model, parent) is None:
        raise q.version_not_found(conn, model, name, parent)
    version = ModelVersion(name, number, config_json, metrics_json, lineage, description, at)
    version_pk = insert_version(conn, model, number, version)
    ensure_blob()
    insert_artifact(
        conn,
        version_pk,
        Artifact(
            name,
            number,
            ArtifactKind.CHECKPOINT,
            checkpoint.sha256,
            checkpoint.size,
            filename,
            target={},
            libraries={},
            report={},
            created_at=at,
        ),
    )
    return q.to_version(q.version_row(conn, name, number))


def add_artifact(
    conn: Connection, artifact: Artifact, *, ensure_blob: Callable[[], None]
) -> Artifact:
    """Attach `artifact` to its version, unless the version already has the same file with the
    same kind and target: then return that one (rows never change)."""
    name, number = artifact.name, artifact.version
    row = q.version_row(conn, name, number)
    same = q.same_artifact(
        conn, row.id, artifact.kind.value, artifact.sha256, canonical_json(artifact.target)
    )
    if same is not None:
        return q.to_artifact(same, name, number)
    ensure_blob()
    pk = insert_artifact(conn, row.id, artifact)
    return q.to_artifact(q.artifact_row(conn, pk), name, number)


def delete(conn: Connection, name: str, version: int) -> ModelVersion:
    """Delete the version's row and its artifact rows; `VersionInUse` while an alias points
    at it (saying how to move the alias)."""
    row = q.version_row(conn, name, version)
    held = q.aliases_pointing_at(conn, row.id)
    if held:
        which = ", ".join(f"'{a}'" for a in held)
        first = held[0]
        raise VersionInUse(
            f"cannot delete {name}:{version}: alias {which} points at it; move the "
            f"alias first (kiln promote {name}:OTHER --alias {first}, or "
            f"kiln rollback {name} --alias {first})"
        )
    conn.execute(artifacts.delete().where(artifacts.c.version_id == row.id))
    conn.execute(versions.delete().where(versions.c.id == row.id))
    return q.to_version(row)
