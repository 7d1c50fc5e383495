"""`Registry`: models, immutable versions, verified artifacts, aliases and their history.

Writes follow one order so that a crash at any point leaves nothing half-visible: artifact
bytes go to the blob store first (atomic rename), then every row of the operation is
inserted in one database transaction. A process killed before the commit leaves at most an
unreferenced blob, which `gc` removes; the version itself never appears.
"""

from __future__ import annotations

import getpass
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from kiln.errors import (
    ArtifactNotFound,
    GcRefused,
    InvalidArgument,
    VersionInUse,
)
from kiln.registry import aliases as alias_moves
from kiln.registry import queries as q
from kiln.registry import rollouts as rollout_state
from kiln.registry.blobs import BlobStore, StoredBlob
from kiln.registry.bundles import BundleManifest, read_bundle, write_bundle
from kiln.registry.database import Database, insert_row
from kiln.registry.gates import (
    DEFAULT_ACCURACY_TOLERANCE,
    Gate,
    default_gates,
)
from kiln.registry.importer import import_manifest
from kiln.registry.records import (
    AliasMove,
    Artifact,
    ArtifactKind,
    GateDecision,
    GcEntry,
    GcReport,
    ImportResult,
    Lineage,
    ModelSummary,
    ModelVersion,
    Rollout,
    RolloutChange,
    RolloutMode,
)
from kiln.registry.references import (
    DEFAULT_ALIAS,
    MAX_VERSION,
    Reference,
    check_version,
    parse_reference,
    validate_name,
)
from kiln.registry.schema import aliases, artifacts, lineage_columns, models, versions

# How often promote runs its gates outside the write lock before it runs them under it.
_OPTIMISTIC_ATTEMPTS = 3


class Registry:
    """The model registry. Safe to use from many processes at once; see `kiln.registry`."""

    def __init__(
        self,
        url: str,
        artifacts_dir: Path,
        *,
        accuracy_tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._db = Database(url)
        self._blobs = BlobStore(artifacts_dir)
        self._accuracy_tolerance = accuracy_tolerance
        self._clock = clock or _utc_now
        self._db.ensure_schema()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._db.url.render_as_string(hide_password=True)

    @property
    def artifacts_dir(self) -> Path:
        return self._blobs.root

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for diagnostics and tests; write through the methods)."""
        return self._db.engine

    def close(self) -> None:
        self._db.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r}, artifacts_dir={str(self.artifacts_dir)!r})"

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
        filename = checkpoint.name

        def work(conn: Connection) -> ModelVersion:
            model = conn.execute(sa.select(models).where(models.c.name == name)).first()
            now = self._clock()
            if model is None:
                model_pk = insert_row(
                    conn, models.insert().values(name=name, next_version=1, created_at=now)
                )
                number = 1
            else:
                model_pk, number = model.id, model.next_version
            if lineage.parent_version is not None:
                parent = conn.execute(
                    sa.select(versions.c.id).where(
                        versions.c.model_id == model_pk,
                        versions.c.version == lineage.parent_version,
                    )
                ).first()
                if parent is None:
                    raise q.version_not_found(conn, model_pk, name, lineage.parent_version)
            conn.execute(
                models.update().where(models.c.id == model_pk).values(next_version=number + 1)
            )
            version_pk = insert_row(
                conn,
                versions.insert().values(
                    model_id=model_pk,
                    version=number,
                    config=config_json,
                    metrics=metrics_json,
                    **lineage_columns(lineage),
                    description=description,
                    created_at=now,
                ),
            )
            self._ensure_blob(blob, checkpoint)
            conn.execute(
                artifacts.insert().values(
                    version_id=version_pk,
                    kind=ArtifactKind.CHECKPOINT.value,
                    sha256=blob.sha256,
                    size=blob.size,
                    filename=filename,
                    target="{}",
                    libraries="{}",
                    report="{}",
                    created_at=now,
                )
            )
            return q.to_version(q.version_row(conn, name, number))

        return self._db.write(work)

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
        return self._db.read(work, snapshot=False)

    def version_of(self, ref: str | Reference) -> int:
        """The version number a reference names, without loading the version.

        The cheapest way to follow an alias (a server polling ``digits@production`` calls
        this); raises exactly what `resolve` raises.
        """
        parsed = parse_reference(ref) if isinstance(ref, str) else ref
        return self._db.read(
            lambda conn: q.version_number(
                conn, parsed.name, parsed.version, parsed.alias or DEFAULT_ALIAS
            ),
            snapshot=False,
        )

    def list_models(self) -> list[ModelSummary]:
        """Every model, by name, with its version count, latest version and aliases."""
        return self._db.read(lambda conn: _summaries(conn, None))

    def get_model(self, name: str) -> ModelSummary:
        """One model's summary; `ModelNotFound` (with a suggestion) if there is none."""
        validate_name(name)

        def work(conn: Connection) -> ModelSummary:
            found = _summaries(conn, name)
            if not found:
                raise q.model_not_found(conn, name)
            return found[0]

        return self._db.read(work)

    def list_versions(self, name: str, *, limit: int | None = None) -> list[ModelVersion]:
        """The versions of `name`, oldest first: all of them, or the newest `limit`."""
        if limit is not None and limit < 1:
            raise InvalidArgument(f"limit must be a positive number of versions, got {limit}")
        if limit is not None and limit > MAX_VERSION:
            limit = None  # more than any model can have; the driver could not take the number

        def work(conn: Connection) -> list[ModelVersion]:
            model = q.model_id(conn, validate_name(name))
            query = (
                sa.select(*q.VERSION_COLUMNS)
                .select_from(models.join(versions, versions.c.model_id == models.c.id))
                .where(versions.c.model_id == model)
                .order_by(versions.c.version.desc())
                .limit(limit)
            )
            return [q.to_version(row) for row in reversed(conn.execute(query).all())]

        return self._db.read(work)

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of `name` and the version each points at."""

        def work(conn: Connection) -> dict[str, int]:
            model = q.model_id(conn, validate_name(name))
            rows = conn.execute(
                sa.select(aliases.c.name, versions.c.version)
                .select_from(aliases.join(versions, versions.c.id == aliases.c.version_id))
                .where(aliases.c.model_id == model)
                .order_by(aliases.c.name)
            )
            return {row.name: row.version for row in rows}

        return self._db.read(work)

    def delete_version(self, name: str, version: int) -> ModelVersion:
        """Delete a version and its artifact rows; return what was deleted.

        Refused with `VersionInUse` while an alias points at it. The number is never reused.
        Blobs stay on disk until `gc` (another version may share them).
        """

        def work(conn: Connection) -> ModelVersion:
            row = q.version_row(conn, validate_name(name), version)
            held = list(
                conn.execute(
                    sa.select(aliases.c.name).where(aliases.c.version_id == row.id)
                ).scalars()
            )
            if held:
                which = ", ".join(f"'{a}'" for a in sorted(held))
                first = sorted(held)[0]
                raise VersionInUse(
                    f"cannot delete {name}:{version}: alias {which} points at it; move the "
                    f"alias first (kiln promote {name}:OTHER --alias {first}, or "
                    f"kiln rollback {name} --alias {first})"
                )
            conn.execute(artifacts.delete().where(artifacts.c.version_id == row.id))
            conn.execute(versions.delete().where(versions.c.id == row.id))
            return q.to_version(row)

        return self._db.write(work)

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
        kind = ArtifactKind.parse(kind) if isinstance(kind, str) else kind
        path = Path(path)
        target_json = _json(target or {}, "target")
        libraries_json = _json(libraries or {}, "libraries")
        report_json = _json(report or {}, "report")
        blob = self._put(path)

        def work(conn: Connection) -> Artifact:
            row = q.version_row(conn, validate_name(name), version)
            same = conn.execute(
                sa.select(artifacts).where(
                    artifacts.c.version_id == row.id,
                    artifacts.c.kind == kind.value,
                    artifacts.c.sha256 == blob.sha256,
                    artifacts.c.target == target_json,
                )
            ).first()
            if same is not None:
                return q.to_artifact(same, name, version)
            self._ensure_blob(blob, path)
            pk = insert_row(
                conn,
                artifacts.insert().values(
                    version_id=row.id,
                    kind=kind.value,
                    sha256=blob.sha256,
                    size=blob.size,
                    filename=path.name,
                    target=target_json,
                    libraries=libraries_json,
                    report=report_json,
                    created_at=self._clock(),
                ),
            )
            added = conn.execute(sa.select(artifacts).where(artifacts.c.id == pk)).one()
            return q.to_artifact(added, name, version)

        return self._db.write(work)

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

        return self._db.read(work)

    def model_artifacts(self, name: str) -> dict[int, list[Artifact]]:
        """Every artifact of every version of `name`, by version number (one query)."""

        def work(conn: Connection) -> dict[int, list[Artifact]]:
            model = q.model_id(conn, validate_name(name))
            rows = conn.execute(
                sa.select(artifacts, versions.c.version.label("number"))
                .select_from(artifacts.join(versions, versions.c.id == artifacts.c.version_id))
                .where(versions.c.model_id == model)
                .order_by(artifacts.c.id)
            )
            found: dict[int, list[Artifact]] = {}
            for row in rows:
                found.setdefault(row.number, []).append(q.to_artifact(row, name, row.number))
            return found

        return self._db.read(work)

    def checkpoint(self, name: str, version: int) -> Artifact:
        """The version's checkpoint artifact (every registered version has one)."""
        found = self.artifacts(name, version, ArtifactKind.CHECKPOINT)
        if not found:
            raise ArtifactNotFound(f"{name}:{version} has no checkpoint artifact")
        return found[0]

    def artifact_file(self, artifact: Artifact) -> Path:
        """The artifact's file on disk, after verifying its sha256.

        Raises `ArtifactCorrupted` (naming the file, expected and actual hash) when the bytes
        changed, `ArtifactNotFound` when the file is gone. The file is read-only and has no
        extension; `artifact.filename` holds the original name.
        """
        return self._blobs.verified_path(artifact.sha256)

    # -- aliases --------------------------------------------------------------------------

    def promote(
        self,
        ref: str | Reference,
        alias: str = DEFAULT_ALIAS,
        *,
        actor: str | None = None,
        reason: str = "",
        force: bool = False,
        gates: Sequence[Gate] | None = None,
    ) -> AliasMove:
        """Point `alias` at the version `ref` names, after the gates pass.

        `gates` defaults to `default_gates()` (test accuracy not worse than the current
        version's by more than the registry's tolerance); pass ``[]`` to run none. Every
        gate's result is stored in the history. Raises `GateFailed` (with the numbers) when a
        gate fails and `force` is false; with `force` the move happens and is recorded as
        forced. Raises `AliasUnchanged` when the alias already points at that version.
        """
        validate_name(alias, "alias name")
        candidate = self.resolve(ref)
        gate_list = list(gates) if gates is not None else self.default_gates()
        who = actor or _os_user()
        # Gates run outside the write lock first (an evaluation gate may take minutes); the
        # move then only happens if the alias still points where the gates looked.
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            now_serving = self._db.read(lambda c: alias_moves.current(c, candidate.name, alias))
            decision = alias_moves.decide(candidate, alias, now_serving, gate_list, force=force)
            seen = None if now_serving is None else now_serving.version

            def attempt(
                conn: Connection, seen: int | None = seen, decision: GateDecision = decision
            ) -> AliasMove | None:
                return alias_moves.promote(
                    conn, candidate, alias, seen,
                    actor=who, reason=reason, decision=decision, at=self._clock(),
                )  # fmt: skip

            move = self._db.write(attempt)
            if move is not None:
                return move

        # The alias kept moving under us: judge and move under the lock, so this one finishes.
        def locked(conn: Connection) -> AliasMove:
            now_serving = alias_moves.current(conn, candidate.name, alias)
            decision = alias_moves.decide(candidate, alias, now_serving, gate_list, force=force)
            seen = None if now_serving is None else now_serving.version
            move = alias_moves.promote(
                conn, candidate, alias, seen,
                actor=who, reason=reason, decision=decision, at=self._clock(),
            )  # fmt: skip
            assert move is not None  # nothing can move the alias while we hold the lock
            return move

        return self._db.write(locked)

    def rollback(
        self,
        name: str,
        alias: str = DEFAULT_ALIAS,
        *,
        actor: str | None = None,
        reason: str = "",
    ) -> AliasMove:
        """Move `alias` back to the version it pointed at before its latest promotion.

        Rollbacks undo promotions in order: promote 1, 2, 3, then rollback twice lands on 1.
        No gates run (a rollback is the way out of a bad promotion). Raises
        `NothingToRollBack` when there is no earlier version or it was deleted.
        """
        validate_name(name)
        validate_name(alias, "alias name")
        who = actor or _os_user()
        return self._db.write(
            lambda conn: alias_moves.rollback(
                conn, name, alias, actor=who, reason=reason, at=self._clock()
            )
        )

    def history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every alias move of `name` (or of one alias), oldest first."""
        validate_name(name)
        if alias is not None:
            validate_name(alias, "alias name")
        return self._db.read(lambda conn: alias_moves.history(conn, name, alias))

    def alias_at(self, name: str, alias: str, when: datetime) -> int | None:
        """The version `alias` pointed at at `when` (timezone-aware), or None if it pointed
        nowhere then: "what served at 14:02?"."""
        if when.tzinfo is None:
            raise InvalidArgument(
                "alias_at needs a timezone-aware time, e.g. datetime(..., tzinfo=UTC)"
            )
        try:
            when = when.astimezone(UTC)
        except OverflowError:
            raise InvalidArgument(
                f"{when} is out of range: in UTC it is before year 1 or after 9999"
            ) from None
        validate_name(name)
        validate_name(alias, "alias name")
        return self._db.read(lambda conn: alias_moves.pointed_at(conn, name, alias, when))

    def default_gates(self) -> list[Gate]:
        """The gates `promote` runs when given none."""
        return default_gates(accuracy_tolerance=self._accuracy_tolerance)

    # -- rollouts -------------------------------------------------------------------------

    def set_rollout(
        self,
        name: str,
        mode: RolloutMode | str,
        *,
        percent: float | None = None,
        alias: str = rollout_state.DEFAULT_ROLLOUT_ALIAS,
        actor: str | None = None,
        reason: str = "",
    ) -> Rollout:
        """Start, change or end a canary or shadow rollout of `name`; return the new state.

        ``canary`` sends `percent` (0 < p <= 100, required) of requests to the version
        `alias` names instead of production; ``shadow`` copies `percent` (default 100) of
        requests to it and only logs its answers; ``off`` ends either (a no-op, writing
        nothing, when none is running). Every change is a `rollout_history` row.

        Raises `InvalidArgument` for a bad mode or percent, `ModelNotFound` (with a
        suggestion) for an unknown model, and `RolloutRefused` when the model has no
        production version, no version at `alias`, the same version at both, or no compiled
        engine for the second one. A refused change writes nothing.
        """
        validate_name(name)
        validate_name(alias, "alias name")
        mode = RolloutMode.parse(mode) if isinstance(mode, str) else mode
        share = _rollout_percent(mode, percent)
        who = actor or _os_user()
        return self._db.write(
            lambda conn: rollout_state.change(
                conn, name, mode, share, alias, actor=who, reason=reason, at=self._clock()
            )
        )

    def rollout(self, name: str) -> Rollout:
        """The rollout of `name` now: mode off when it never had one.

        One indexed statement (servers poll it every second or so); also answers which version
        the rollout's alias points at. `ModelNotFound` for an unknown model.
        """
        validate_name(name)
        return self._db.read(lambda conn: rollout_state.state(conn, name), snapshot=False)

    def rollout_history(self, name: str) -> list[RolloutChange]:
        """Every rollout change of `name`, oldest first."""
        validate_name(name)
        return self._db.read(lambda conn: rollout_state.history(conn, name))

    # -- bundles and housekeeping ---------------------------------------------------------

    def export_version(self, ref: str | Reference, file: Path | str) -> BundleManifest:
        """Write the version `ref` names, with every artifact, to a bundle file.

        Each blob is verified first: a corrupted artifact is never exported.
        """
        file = Path(file)
        version = self.resolve(ref)
        found = self.artifacts(version.name, version.version)
        blobs: dict[str, Path] = {}
        for artifact in found:
            blobs[artifact.sha256] = self.artifact_file(artifact)
        manifest = BundleManifest(source_ref=version.ref, version=version, artifacts=tuple(found))
        write_bundle(file, manifest, list(blobs.items()))
        return manifest

    def import_bundle(self, file: Path | str) -> ImportResult:
        """Import a bundle written by `export_version`, checking every blob's hash.

        The version keeps its number when that number was never used here; otherwise it gets
        the model's next number (numbers are never reused). Importing the same bundle twice
        changes nothing the second time. Raises `BundleInvalid` for a foreign, truncated or
        malformed file and `ArtifactCorrupted` when a blob does not match its hash.
        """
        with read_bundle(Path(file)) as (manifest, contents):

            def store(artifact: Artifact) -> None:
                with contents.open(artifact.sha256, artifact.size) as stream:
                    self._blobs.put_stream(stream, expected_sha256=artifact.sha256)

            # Always read every blob: that is what checks the bundle's hashes (and it repairs a
            # damaged local copy of the same blob).
            for artifact in {a.sha256: a for a in manifest.artifacts}.values():
                store(artifact)
            return self._db.write(
                lambda conn: import_manifest(
                    conn,
                    manifest,
                    blob_exists=self._blobs.exists,
                    store=store,
                    now=self._clock(),
                )
            )

    def gc(self, *, dry_run: bool = False, force: bool = False) -> GcReport:
        """Remove blobs no artifact row references, and temporary files of dead writers.

        With `dry_run`, report what would be removed and remove nothing. Raises `GcRefused`
        (removing nothing) when more than half of the stored blobs would go, all of them
        included, unless `force`: a registry that references almost nothing of what is
        stored was more likely replaced, restored from an old backup or re-created than
        emptied on purpose. Raises `RegistryCorrupted` when SQLite's integrity check fails
        (a damaged page would read as "not referenced").

        Runs under the database write lock, so a registration in flight either commits its
        reference first (its blob is kept) or finds its blob gone and stores it again.
        """

        def work(conn: Connection) -> GcReport:
            self._db.check_integrity(conn)
            referenced = set(conn.execute(sa.select(artifacts.c.sha256).distinct()).scalars())
            stored = list(self._blobs.stored())
            doomed: list[GcEntry] = []
            for sha256, path in stored:
                if sha256 not in referenced:
                    try:
                        doomed.append(GcEntry("blob", sha256, path.stat().st_size))
                    except FileNotFoundError:
                        continue
            confirmation = _gc_confirmation(len(doomed), len(stored), doomed)
            if confirmation is not None and not (dry_run or force):
                raise GcRefused(
                    f"kiln gc refused: {confirmation}; nothing was deleted. Check the registry "
                    "first (kiln models list); kiln gc --dry-run lists the blobs, "
                    "kiln gc --yes deletes them"
                )
            temps = []
            for temp in self._blobs.stale_temp_files():
                try:
                    temps.append(GcEntry("temp_file", temp.name, temp.stat().st_size))
                except FileNotFoundError:
                    continue
            report = GcReport(
                tuple(doomed + temps), len(stored) - len(doomed), dry_run, confirmation
            )
            if dry_run:
                return report
            removed = []
            for entry in doomed:
                try:
                    self._blobs.path(entry.name).unlink()
                except FileNotFoundError:
                    continue
                removed.append(entry)
            for entry in temps:
                (self._blobs.root / "sha256" / "incoming" / entry.name).unlink(missing_ok=True)
            return GcReport(tuple(removed + temps), report.kept_blobs, False, confirmation)

        return self._db.write(work)

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


def _summaries(conn: Connection, name: str | None) -> list[ModelSummary]:
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


def _gc_confirmation(doomed: int, stored: int, entries: list[GcEntry]) -> str | None:
    """Why deleting `doomed` of `stored` blobs needs confirmation, or None when it does not.

    The rule: more than half of the stored blobs (so one orphan beside one kept blob, the
    trace of a killed registration, needs none; every blob of a registry does).
    """
    if doomed * 2 <= stored:
        return None
    freed = sum(e.bytes for e in entries)
    if doomed == stored:
        return (
            f"the registry references none of the {stored} stored artifact blobs ({freed} "
            "bytes), which is what a replaced, restored or re-created registry database "
            "looks like"
        )
    return (
        f"it would delete {doomed} of the {stored} stored artifact blobs ({freed} bytes), "
        "more than half, which kiln gc does only when confirmed"
    )


def _rollout_percent(mode: RolloutMode, percent: float | None) -> float:
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


def _json(value: Mapping[str, Any], what: str) -> str:
    try:
        return q.dumps(dict(value))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be JSON-serialisable: {exc}") from None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _utc_now() -> datetime:
    return datetime.now(UTC)
