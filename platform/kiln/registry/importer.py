"""Writing an export bundle's version into this registry (inside one write transaction).

Numbering: the version keeps its number when this registry never used it (so ``digits:3``
stays ``digits:3`` when moved to an empty registry); otherwise it gets the model's next
number, because numbers are never reused. A version already here with the same number,
config, metrics and checkpoint is the same version: only artifacts it lacks are added.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.registry import queries as q
from kiln.registry.bundles import BundleManifest
from kiln.registry.database import insert_row
from kiln.registry.records import Artifact, ArtifactKind, ImportResult
from kiln.registry.schema import artifacts, lineage_columns, models, versions


def import_manifest(
    conn: Connection,
    manifest: BundleManifest,
    *,
    blob_exists: Callable[[str], bool],
    store: Callable[[Artifact], None],
    now: datetime,
) -> ImportResult:
    """Insert the manifest's version and artifacts; `store` re-stores a blob a gc removed."""
    source = manifest.version
    name = source.name
    config_json, metrics_json = source.config_json, source.metrics_json
    model = conn.execute(sa.select(models).where(models.c.name == name)).first()
    if model is None:
        model_pk = insert_row(
            conn, models.insert().values(name=name, next_version=1, created_at=now)
        )
        next_version = 1
    else:
        model_pk, next_version = model.id, model.next_version
    existing = conn.execute(q.RESOLVE_VERSION, {"name": name, "version": source.version}).first()
    if (
        existing is not None
        and existing.config == config_json
        and existing.metrics == metrics_json
        and _checkpoints(conn, existing.id) == _checkpoints_of(manifest)
    ):
        version_pk, number, created = existing.id, source.version, False
    else:
        number = source.version if source.version >= next_version else next_version
        conn.execute(
            models.update()
            .where(models.c.id == model_pk)
            .values(next_version=max(next_version, number + 1))
        )
        version_pk = insert_row(
            conn,
            versions.insert().values(
                model_id=model_pk,
                version=number,
                config=config_json,
                metrics=metrics_json,
                **lineage_columns(source.lineage),
                description=source.description,
                created_at=source.created_at,
            ),
        )
        created = True
    have = {(a.kind, a.sha256, a.target) for a in q.artifact_rows(conn, version_pk)}
    for artifact in manifest.artifacts:
        key = (artifact.kind.value, artifact.sha256, q.dumps(artifact.target))
        if key in have:
            continue
        if not blob_exists(artifact.sha256):
            store(artifact)  # a gc ran between storing it and taking the lock
        conn.execute(
            artifacts.insert().values(
                version_id=version_pk,
                kind=artifact.kind.value,
                sha256=artifact.sha256,
                size=artifact.size,
                filename=artifact.filename,
                target=key[2],
                libraries=q.dumps(artifact.libraries),
                report=q.dumps(artifact.report),
                created_at=artifact.created_at,
            )
        )
        have.add(key)
    version = q.to_version(q.version_row(conn, name, number))
    rows = q.artifact_rows(conn, version_pk)
    return ImportResult(
        version=version,
        source_ref=manifest.source_ref,
        created=created,
        artifacts=tuple(q.to_artifact(r, name, number) for r in rows),
    )


def _checkpoints(conn: Connection, version_pk: int) -> set[str]:
    return {r.sha256 for r in q.artifact_rows(conn, version_pk, ArtifactKind.CHECKPOINT.value)}


def _checkpoints_of(manifest: BundleManifest) -> set[str]:
    return {a.sha256 for a in manifest.artifacts if a.kind is ArtifactKind.CHECKPOINT}
