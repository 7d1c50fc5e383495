"""The model registry: models, immutable versions, verified artifacts, aliases with history.

Open one with `open` and call its methods; every stage of Kiln (train, compile, serve,
evaluate, the CLI) goes through this API, from as many processes at once as it likes::

    from pathlib import Path
    import kiln.registry
    from kiln.registry import Lineage

    registry = kiln.registry.open()           # KILN_REGISTRY_URL, or KILN_HOME/registry.db
    v = registry.register_version(
        "digits",
        checkpoint=Path("runs/r1/model.safetensors"),
        config={"arch": "cnn", "epochs": 5},
        metrics={"test_accuracy": 0.981, "test_loss": 0.06},
        lineage=Lineage(dataset="mnist5k", data_fingerprint="sha256:…", run_id="r1"),
    )                                          # -> ModelVersion, v.ref == "digits:1"
    registry.promote(v.ref, "production", reason="first model")   # gates run first
    registry.resolve("digits")                 # digits@production -> ModelVersion
    ckpt = registry.checkpoint("digits", v.version)
    path = registry.artifact_file(ckpt)        # sha256-verified file on disk
    registry.rollback("digits")                # back to what production served before
    registry.alias_at("digits", "production", when)   # which version served at `when`
    registry.set_rollout("digits", "canary", percent=10)  # 10% to digits@candidate
    registry.rollout("digits")                 # what servers poll: mode, percent, version

References (`parse_reference`): ``digits:3`` is a version, ``digits@candidate`` an alias,
``digits`` means ``digits@production``.

Guarantees:

- Version numbers are assigned inside a write transaction: concurrent registrations from
  many processes get distinct numbers; a deleted number is never reused.
- Versions and artifact rows are immutable; a version may gain artifacts (`add_artifact`).
- Artifact bytes are content-addressed (``KILN_HOME/artifacts/sha256/ab/abcdef…``), written
  atomically, and verified against their sha256 on every `artifact_file` call
  (`ArtifactCorrupted` on mismatch).
- A registration killed at any point leaves no visible version; `gc` removes what it left.
  `gc` refuses (`GcRefused`) to delete more than half of the stored blobs, or all of them,
  unless forced: that is what a replaced or re-created database looks like.
- A registry file is created whole; one that exists but is empty, truncated, overwritten or
  foreign raises `RegistryCorrupted` (DATA_LOSS) and is never re-initialised.
- Every alias move is a history row: from, to, when (UTC), who, why, the gate decision and
  whether it was forced.
- Every rollout change (canary, shadow, off) is a history row too; a refused one writes
  nothing.
- Busy databases are retried; callers see `RegistryBusy` only after minutes of contention.

Errors are `kiln.errors.KilnError` subclasses whose messages say what exists and what to run.
"""

from __future__ import annotations

from pathlib import Path

from kiln.registry.blobs import BlobStore
from kiln.registry.bundles import BundleManifest
from kiln.registry.gates import (
    DEFAULT_ACCURACY_TOLERANCE,
    DEFAULT_RMSE_TOLERANCE,
    AccuracyGate,
    Gate,
    GateContext,
    RecordedRmseGate,
    default_gates,
    task_of,
)
from kiln.registry.records import (
    AliasMove,
    Artifact,
    ArtifactKind,
    GateDecision,
    GateResult,
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
from kiln.registry.references import DEFAULT_ALIAS, Reference, parse_reference, validate_name
from kiln.registry.registry import Registry
from kiln.registry.rollouts import DEFAULT_ROLLOUT_ALIAS
from kiln.registry.s3_blobs import S3BlobStore
from kiln.settings import Settings
from kiln.storage import open_storage

__all__ = [
    "DEFAULT_ACCURACY_TOLERANCE",
    "DEFAULT_ALIAS",
    "DEFAULT_RMSE_TOLERANCE",
    "DEFAULT_ROLLOUT_ALIAS",
    "AccuracyGate",
    "AliasMove",
    "Artifact",
    "ArtifactKind",
    "BundleManifest",
    "Gate",
    "GateContext",
    "GateDecision",
    "GateResult",
    "GcEntry",
    "GcReport",
    "ImportResult",
    "Lineage",
    "ModelSummary",
    "ModelVersion",
    "RecordedRmseGate",
    "Reference",
    "Registry",
    "Rollout",
    "RolloutChange",
    "RolloutMode",
    "default_gates",
    "open",
    "parse_reference",
    "task_of",
    "validate_name",
]


def open(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    accuracy_tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
) -> Registry:
    """Open (creating or migrating as needed) the registry.

    `url` is a SQLAlchemy URL; it defaults to ``settings.resolved_registry_url``
    (``KILN_REGISTRY_URL``, else SQLite at ``KILN_HOME/registry.db``). Artifact blobs live
    under ``KILN_HOME/artifacts``, or with ``KILN_STORAGE_URL=s3://bucket/prefix`` in the
    bucket, with verified local copies under ``KILN_HOME/cache/artifacts``.
    `accuracy_tolerance` configures the default promotion gate. Close the registry (or use it
    as a context manager) to release its connections.
    """
    settings = settings or Settings()
    home = settings.home.expanduser().resolve()
    storage = open_storage(settings)
    blobs: BlobStore | Path = home / "artifacts"
    if storage is not None:
        blobs = S3BlobStore(storage, home / "cache" / "artifacts")
    return Registry(
        url or settings.resolved_registry_url, blobs, accuracy_tolerance=accuracy_tolerance
    )
