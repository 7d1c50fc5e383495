"""`Registry`: the `Catalog` of versions and artifacts, plus aliases and their history,
rollouts, export bundles and garbage collection.

Each method checks its arguments, then runs its work in database transactions (the steps in
`aliases`, `rollouts`, `importer` and `garbage`); see `catalog` for the order in which blobs
and rows are written, which is what leaves nothing half-visible after a crash.
"""

from __future__ import annotations

import functools
import getpass
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Connection

from kiln.errors import InvalidArgument
from kiln.registry import aliases as alias_moves
from kiln.registry import garbage
from kiln.registry import rollouts as rollout_state
from kiln.registry.blobs import BlobStore
from kiln.registry.bundles import BundleManifest, read_bundle, write_bundle
from kiln.registry.catalog import Catalog
from kiln.registry.gates import DEFAULT_ACCURACY_TOLERANCE, Gate, default_gates, task_of
from kiln.registry.importer import import_manifest
from kiln.registry.records import (
    AliasMove,
    Artifact,
    GcReport,
    ImportResult,
    Rollout,
    RolloutChange,
    RolloutMode,
)
from kiln.registry.references import DEFAULT_ALIAS, Reference, validate_name

# How often promote runs its gates outside the write lock before it runs them under it.
_OPTIMISTIC_ATTEMPTS = 3


class Registry(Catalog):
    """The model registry. Safe to use from many processes at once; see `kiln.registry`."""

    def __init__(
        self,
        url: str,
        blobs: BlobStore | Path,
        *,
        accuracy_tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(url, blobs, clock=clock)
        self._accuracy_tolerance = accuracy_tolerance

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

        `gates` defaults to `default_gates()` for the candidate's task (its recorded test
        accuracy, or a regressor's test RMSE, not worse than the current version's by more
        than the registry's tolerance); pass ``[]`` to run none. Every
        gate's result is stored in the history. Raises `GateFailed` (with the numbers) when a
        gate fails and `force` is false; with `force` the move happens and is recorded as
        forced. Raises `AliasUnchanged` when the alias already points at that version.
        """
        validate_name(alias, "alias name")
        candidate = self.resolve(ref)
        gate_list = list(gates) if gates is not None else self.default_gates(task_of(candidate))
        promotion = alias_moves.Promotion(
            candidate, alias, gate_list,
            force=force, actor=actor or _os_user(), reason=reason, clock=self._clock,
        )  # fmt: skip
        # Gates run outside the write lock first (an evaluation gate may take minutes); the
        # move then only happens if the alias still points where the gates looked.
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            verdict = promotion.judge(self._database.read(promotion.serving))
            moved = self._database.write(functools.partial(promotion.move, verdict=verdict))
            if moved is not None:
                return moved
        # The alias kept moving under us: the same steps under the lock, so this one finishes.
        return self._database.write(promotion.locked)

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
        return self._database.write(
            lambda conn: alias_moves.rollback(
                conn, name, alias, actor=who, reason=reason, at=self._clock()
            )
        )

    def history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every alias move of `name` (or of one alias), oldest first."""
        validate_name(name)
        if alias is not None:
            validate_name(alias, "alias name")
        return self._database.read(lambda conn: alias_moves.history(conn, name, alias))

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
        return self._database.read(lambda conn: alias_moves.pointed_at(conn, name, alias, when))

    def default_gates(self, task: str = "classification") -> list[Gate]:
        """The gates `promote` runs when given none, for a candidate of `task`."""
        return default_gates(accuracy_tolerance=self._accuracy_tolerance, task=task)

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
        share = rollout_state.checked_percent(mode, percent)
        who = actor or _os_user()
        return self._database.write(
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
        return self._database.read(lambda conn: rollout_state.state(conn, name), snapshot=False)

    def rollout_history(self, name: str) -> list[RolloutChange]:
        """Every rollout change of `name`, oldest first."""
        validate_name(name)
        return self._database.read(lambda conn: rollout_state.history(conn, name))

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
            return self._database.write(
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
            self._database.check_integrity(conn)
            return garbage.collect(conn, self._blobs, dry_run=dry_run, force=force)

        return self._database.write(work)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"
