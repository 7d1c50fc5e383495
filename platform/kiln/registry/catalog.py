"""`Catalog`: models, their immutable versions and verified artifacts, as `Registry` holds them.

Writes follow one order so that a crash at any point leaves nothing half-visible: artifact
bytes go to the blob store first (atomic rename), then every row of the operation is
inserted in one database transaction. A process killed before the commit leaves at most an
unreferenced blob, which `gc` removes; the version itself never appears.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from sqlalchemy.engine import Connection, Engine

from kiln.errors import ArtifactNotFound, InvalidArgument
from kiln.registry import queries as q
from kiln.registry import versions as version_rows
from kiln.registry.blobs import BlobStore, LocalBlobStore, StoredBlob
from kiln.registry.database import Database
from kiln.registry.records import (
    Artifact,
    ArtifactKind,
    Lineage,
    ModelSummary,
    ModelVersion,
    canonical_json,
)
from kiln.registry.references import (
    DEFAULT_ALIAS,
    MAX_VERSION,
    Reference,
    check_version,
    parse_reference,
    validate_name,
)


class Catalog:
    """What a registry holds: models, versions, artifacts. `Registry` adds aliases, rollouts,
    bundles and gc on top; open one with `kiln.registry.open`."""

    def __init__(
        self,
        url: str,
        blobs: BlobStore | Path,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._database = Database(url)
        self._blobs: BlobStore = LocalBlobStore(blobs) if isinstance(blobs, Path) else blobs
        self._clock = clock or _utc_now
        self._database.ensure_schema()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._database.url.render_as_string(hide_password=True)

    @property
    def blobs(self) -> BlobStore:
        """Where the artifact bytes are: a directory, or a bucket with a local cache."""
        return self._blobs

    @property
    def artifacts_location(self) -> str:
        """The blob store's location as users write it (a path, or s3://bucket/prefix/...)."""
        return self._blobs.location

    @property
    def db(self) -> Engine:
        """The database's SQLAlchemy engine (for diagnostics and tests; write through the
        methods)."""
        return self._database.db

    def close(self) -> None:
        self._database.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, artifacts={self.artifacts_location!r})"

    # -- versions -------------------------------------------------------------------------

    def register_version(
        self,
        name: str,
        *,
        checkpoint: Path | str,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        lineage: Lineage | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Register a new version of `name` (created on first use) with its checkpoint.

        The version number is the model's next one, assigned inside the write transaction, so
        concurrent registrations get distinct numbers. Raises `InvalidReference` for an illegal
        name, `InvalidArgument` for a missing file or values that are not JSON, and
        `VersionNotFound` when `lineage.parent_version` does not exist.
        """
        validate_name(name)
        checkpoint = Path(checkpoint)
        lineage = lineage or Lineage()
        if lineage.parent_version is not None:
            check_version(lineage.parent_version)
        config_json = _json(config, "config")
        metrics_json = _json(metrics, "metrics")
        blob = self._put(checkpoint)
        return self._database.write(
            lambda conn: version_rows.register(
                conn, name, blob, checkpoint.name,
                config_json=config_json, metrics_json=metrics_json, lineage=lineage,
                description=description, at=self._clock(),
                ensure_blob=lambda: self._ensure_blob(blob, checkpoint),
            )
        )  # fmt: skip

    def get_version(self, name: str, version: int) -> ModelVersion:
        """Version `version` of `name`; `ModelNotFound` / `VersionNotFound` otherwise."""
        return self.resolve(Reference(name=validate_name(name), version=version))

    def resolve(self, ref: str | Reference) -> ModelVersion:
        """The version a reference names (``digits:3``, ``digits@production``, ``digits``).

        One indexed query on the hit path. Raises `InvalidReference`, `ModelNotFound`,
        `VersionNotFound` or `AliasNotFound`, each saying what exists.
        """
        parsed = parse_reference(ref) if isinstance(ref, str) else ref

        def work(conn: Connection) -> ModelVersion:
            if parsed.version is not None:
                return q.to_version(q.version_row(conn, parsed.name, parsed.version))
            return q.to_version(q.alias_row(conn, parsed.name, parsed.alias or DEFAULT_ALIAS))

        # One statement answers a hit; a miss only builds an error message from more.
        return self._database.read(work, snapshot=False)

    def version_of(self, ref: str | Reference) -> int:
        """The version number a reference names, without loading the version.

        The cheapest way to follow an alias (a server polling ``digits@production`` calls
        this); raises exactly what `resolve` raises.
        """
        parsed = parse_reference(ref) if isinstance(ref, str) else ref
        return self._database.read(
            lambda conn: q.version_number(
                conn, parsed.name, parsed.version, parsed.alias or DEFAULT_ALIAS
            ),
            snapshot=False,
        )

    def list_models(self) -> list[ModelSummary]:
        """Every model, by name, with its version count, latest version and aliases."""
        return self._database.read(lambda conn: q.summaries(conn, None))

    def get_model(self, name: str) -> ModelSummary:
        """One model's summary; `ModelNotFound` (with a suggestion) if there is none."""
        validate_name(name)

        def work(conn: Connection) -> ModelSummary:
            found = q.summaries(conn, name)
            if not found:
                raise q.model_not_found(conn, name)
            return found[0]

        return self._database.read(work)

    def list_versions(self, name: str, *, limit: int | None = None) -> list[ModelVersion]:
        """The versions of `name`, oldest first: all of them, or the newest `limit`."""
        if limit is not None and limit < 1:
            raise InvalidArgument(f"limit must be a positive number of versions, got {limit}")
        if limit is not None and limit > MAX_VERSION:
            limit = None  # more than any model can have; the driver could not take the number
        validate_name(name)
        return self._database.read(
            lambda conn: q.newest_versions(conn, q.model_id(conn, name), limit)
        )

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of `name` and the version each points at."""
        validate_name(name)
        return self._database.read(lambda conn: q.model_aliases(conn, q.model_id(conn, name)))

    def delete_version(self, name: str, version: int) -> ModelVersion:
        """Delete a version and its artifact rows; return what was deleted.

        Refused with `VersionInUse` while an alias points at it. The number is never reused.
        Blobs stay on disk until `gc` (another version may share them).
        """
        validate_name(name)
        return self._database.write(lambda conn: version_rows.delete(conn, name, version))

    # -- artifacts ------------------------------------------------------------------------

    def add_artifact(
        self,
        name: str,
        version: int,
        *,
        kind: ArtifactKind | str,
        path: Path | str,
        target: Mapping[str, Any] | None = None,
        libraries: Mapping[str, str] | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Attach a file to an existing version (compile adds engines this way).

        Existing rows never change; adding the same file with the same kind and target again
        returns the existing artifact.
        """
        validate_name(name)
        kind = ArtifactKind.parse(kind) if isinstance(kind, str) else kind
        path = Path(path)
        # Checked before the blob is stored: a bad value leaves nothing behind.
        for value, what in ((target, "target"), (libraries, "libraries"), (report, "report")):
            _json(value or {}, what)
        blob = self._put(path)
        return self._database.write(
            lambda conn: version_rows.add_artifact(
                conn,
                Artifact(
                    name, version, kind, blob.sha256, blob.size, path.name,
                    target=dict(target or {}), libraries=dict(libraries or {}),
                    report=dict(report or {}), created_at=self._clock(),
                ),
                ensure_blob=lambda: self._ensure_blob(blob, path),
            )
        )  # fmt: skip

    def artifacts(
        self, name: str, version: int, kind: ArtifactKind | str | None = None
    ) -> list[Artifact]:
        """A version's artifacts (of one kind, if given), oldest first."""
        kind_value = None if kind is None else ArtifactKind.parse(str(kind)).value

        def work(conn: Connection) -> list[Artifact]:
            row = q.version_row(conn, validate_name(name), version)
            return [
                q.to_artifact(a, name, version) for a in q.artifact_rows(conn, row.id, kind_value)
            ]

        return self._database.read(work)

    def model_artifacts(self, name: str) -> dict[int, list[Artifact]]:
        """Every artifact of every version of `name`, by version number (one query)."""
        validate_name(name)
        return self._database.read(
            lambda conn: q.model_artifacts(conn, q.model_id(conn, name), name)
        )

    def checkpoint(self, name: str, version: int) -> Artifact:
        """The version's checkpoint artifact (every registered version has one)."""
        found = self.artifacts(name, version, ArtifactKind.CHECKPOINT)
        if not found:
            raise ArtifactNotFound(f"{name}:{version} has no checkpoint artifact")
        return found[0]

    def artifact_file(self, artifact: Artifact) -> Path:
        """The artifact's file on disk, after verifying its sha256 (with object storage, a
        verified copy in the local cache, downloaded when it is not there yet).

        Raises `ArtifactCorrupted` (naming the file, expected and actual hash) when the bytes
        changed, `ArtifactNotFound` when the file is gone. The file is read-only and has no
        extension; `artifact.filename` holds the original name.
        """
        return self._blobs.verified_path(artifact.sha256)

    # -- internals ------------------------------------------------------------------------

    def _put(self, path: Path) -> StoredBlob:
        if not path.is_file():
            raise InvalidArgument(f"no such file: {path}")
        return self._blobs.put_file(path)

    def _ensure_blob(self, blob: StoredBlob, source: Path) -> None:
        # Called with the write lock held: a gc that ran between storing the blob and taking
        # the lock may have removed it as unreferenced. Store it again before referencing it.
        if not self._blobs.exists(blob.sha256):
            again = self._blobs.put_file(source)
            if again.sha256 != blob.sha256:
                raise InvalidArgument(f"{source} changed while it was being registered")


def _json(value: Mapping[str, Any], what: str) -> str:
    try:
        return canonical_json(dict(value))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be JSON-serialisable: {exc}") from None


def _utc_now() -> datetime:
    return datetime.now(UTC)
