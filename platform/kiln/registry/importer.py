"""Writing an export bundle's version into this registry (inside one write transaction).

Numbering: the version keeps its number when this registry never used it (so ``digits:3``
stays ``digits:3`` when moved to an empty registry); otherwise it gets the model's next
number, because numbers are never reused. A version already here with the same number,
config, metrics and checkpoint is the same version: only artifacts it lacks are added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Connection

from kiln.registry import queries as q
from kiln.registry.bundles import BundleManifest
from kiln.registry.records import Artifact, ArtifactKind, ImportResult, canonical_json
from kiln.registry.versions import ensure_model, insert_artifact, insert_version


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
    model, next_number = ensure_model(conn, name, at=now)
    existing = conn.execute(q.RESOLVE_VERSION, {"name": name, "version": source.version}).first()
    if (
        existing is not None
        and existing.config == source.config_json
        and existing.metrics == source.metrics_json
        and _checkpoints(conn, existing.id) == _checkpoints_of(manifest)
    ):
        version_pk, number, created = existing.id, source.version, False
    else:
        number = max(source.version, next_number)
        version_pk = insert_version(
            conn, model, next_number, dataclasses.replace(source, version=number)
        )
        created = True
    have = {(a.kind, a.sha256, a.target) for a in q.artifact_rows(conn, version_pk)}
    for artifact in manifest.artifacts:
        key = (artifact.kind.value, artifact.sha256, canonical_json(artifact.target))
        if key in have:
            continue
        if not blob_exists(artifact.sha256):
            store(artifact)  # a gc ran between storing it and taking the lock
        insert_artifact(conn, version_pk, artifact)
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
