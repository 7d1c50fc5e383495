"""The registry's records: immutable values returned by `Registry` methods.

Mapping fields (config, metrics, target, ...) are plain dicts decoded from the database for
each record; mutating one changes nothing stored. `to_dict()` gives a JSON-ready form, used by
`--json` output and export bundles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any

from kiln.errors import InvalidArgument


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class ArtifactKind(StrEnum):
    """What an artifact file is. Checkpoints are safetensors; the rest are compiled engines."""

    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    AOTINDUCTOR = "aotinductor"

    @classmethod
    def parse(cls, value: str) -> ArtifactKind:
        """`ArtifactKind(value)`, raising `InvalidArgument` with the accepted kinds."""
        try:
            return cls(value)
        except ValueError:
            kinds = ", ".join(k.value for k in cls)
            raise InvalidArgument(f"unknown artifact kind '{value}'; kinds: {kinds}") from None


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a version came from. Every field is optional: record what is known."""

    dataset: str | None = None
    """The data set's name, e.g. ``mnist5k``."""
    data_fingerprint: str | None = None
    """A content hash of the training data (see `kiln.data`)."""
    parent_version: int | None = None
    """The version this one was trained from or to replace (same model)."""
    run_id: str | None = None
    """The training run (``KILN_HOME/runs/RUN_ID``)."""
    git_commit: str | None = None
    """The source commit of the code that trained it, when known."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_fingerprint": self.data_fingerprint,
            "parent_version": self.parent_version,
            "run_id": self.run_id,
            "git_commit": self.git_commit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lineage:
        parent = data.get("parent_version")
        return cls(
            dataset=data.get("dataset"),
            data_fingerprint=data.get("data_fingerprint"),
            parent_version=int(parent) if parent is not None else None,
            run_id=data.get("run_id"),
            git_commit=data.get("git_commit"),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version of a model.

    `config` and `metrics` are decoded from their stored JSON on first access: a trainer's
    config can carry tens of kilobytes (the data profile used for drift), and resolving an
    alias, which a server does on every poll, should not pay for decoding it. Build one with
    `ModelVersion.create`.
    """

    name: str
    version: int
    config_json: str = field(repr=False)
    """`config` as canonical JSON (sorted keys), as stored."""
    metrics_json: str = field(repr=False)
    """`metrics` as canonical JSON (sorted keys), as stored."""
    lineage: Lineage
    description: str
    created_at: datetime

    @classmethod
    def create(
        cls,
        name: str,
        version: int,
        *,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        lineage: Lineage,
        description: str,
        created_at: datetime,
    ) -> ModelVersion:
        return cls(
            name,
            version,
            canonical_json(dict(config)),
            canonical_json(dict(metrics)),
            lineage,
            description,
            created_at,
        )

    @cached_property
    def config(self) -> dict[str, Any]:
        """The training config (model builder, arguments, data set, ...)."""
        value: dict[str, Any] = json.loads(self.config_json)
        return value

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """Recorded metrics, e.g. ``test_accuracy``, ``test_loss``, ``ece``."""
        value: dict[str, Any] = json.loads(self.metrics_json)
        return value

    @property
    def ref(self) -> str:
        """The reference that names exactly this version: ``name:version``."""
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "config": self.config,
            "metrics": self.metrics,
            "lineage": self.lineage.to_dict(),
            "description": self.description,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file belonging to a version, stored once under its sha256."""

    name: str
    version: int
    kind: ArtifactKind
    sha256: str
    size: int
    filename: str
    """The file's original name (e.g. ``model.safetensors``); blobs are stored without it."""
    target: dict[str, Any]
    """The hardware it was built for, e.g. ``{"device": "cuda", "gpu": "H100"}``."""
    libraries: dict[str, str]
    """Library versions it was built with, e.g. ``{"tensorrt": "10.3.0"}``."""
    report: dict[str, Any]
    """Free-form: parity against the checkpoint, latency, build options."""
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind.value,
            "sha256": self.sha256,
            "size": self.size,
            "filename": self.filename,
            "target": self.target,
            "libraries": self.libraries,
            "report": self.report,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A model as `list_models` shows it."""

    name: str
    created_at: datetime
    version_count: int
    latest_version: int | None
    aliases: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "version_count": self.version_count,
            "latest_version": self.latest_version,
            "aliases": self.aliases,
        }


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict on one promotion."""

    gate: str
    passed: bool
    numbers: dict[str, float | None]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "numbers": self.numbers,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        return cls(
            gate=str(data["gate"]),
            passed=bool(data["passed"]),
            numbers=dict(data.get("numbers") or {}),
            message=str(data.get("message", "")),
        )


@dataclass(frozen=True, slots=True)
class GateDecision:
    """All gates' verdicts on one promotion, and whether a failure was overridden."""

    results: tuple[GateResult, ...] = ()
    forced: bool = False

    @property
    def passed(self) -> bool:
        """True when every gate passed (vacuously true when no gate ran)."""
        return all(r.passed for r in self.results)

    def summary(self) -> str:
        if not self.results:
            return "no gates"
        verdict = "passed" if self.passed else ("failed, forced" if self.forced else "failed")
        return f"{verdict}: " + "; ".join(f"{r.gate}: {r.message}" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "forced": self.forced,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateDecision:
        return cls(
            results=tuple(GateResult.from_dict(r) for r in data.get("results", [])),
            forced=bool(data.get("forced", False)),
        )


@dataclass(frozen=True, slots=True)
class AliasMove:
    """One row of an alias's history: it moved from one version to another."""

    name: str
    alias: str
    from_version: int | None
    """None when the alias was created by this move."""
    to_version: int
    at: datetime
    """When it moved, timezone-aware UTC."""
    actor: str
    reason: str
    action: str
    """``promote`` or ``rollback``."""
    gate: GateDecision | None
    """The gate decision; None for rollbacks, which run no gates."""
    forced: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
            "action": self.action,
            "gate": self.gate.to_dict() if self.gate else None,
            "forced": self.forced,
        }


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What `import_bundle` did."""

    version: ModelVersion
    source_ref: str
    """The reference the bundle was exported from, in its source registry."""
    created: bool
    """False when this registry already held the same version (nothing was written)."""
    artifacts: tuple[Artifact, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.version.ref,
            "source_ref": self.source_ref,
            "created": self.created,
            "version": self.version.to_dict(),
            "artifacts": [a.to_dict() for a in self.artifacts],
        }


@dataclass(frozen=True, slots=True)
class GcEntry:
    """One thing `gc` removed, or would remove."""

    kind: str
    """``blob`` (an artifact no version references) or ``temp_file`` (a dead writer's)."""
    name: str
    """The blob's sha256, or the temporary file's name."""
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "bytes": self.bytes}


@dataclass(frozen=True, slots=True)
class GcReport:
    """What `gc` removed and kept; with `dry_run`, what it would remove (nothing was)."""

    entries: tuple[GcEntry, ...]
    kept_blobs: int
    dry_run: bool = False
    confirmation: str | None = None
    """Why a real run would need ``force`` (``--yes``), or None when it would not."""

    @property
    def removed_blobs(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries if e.kind == "blob")

    @property
    def removed_temp_files(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries if e.kind == "temp_file")

    @property
    def freed_bytes(self) -> int:
        return sum(e.bytes for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed_blobs": list(self.removed_blobs),
            "removed_temp_files": list(self.removed_temp_files),
            "freed_bytes": self.freed_bytes,
            "kept_blobs": self.kept_blobs,
            "entries": [e.to_dict() for e in self.entries],
            "confirmation_needed": self.confirmation,
        }


class RolloutMode(StrEnum):
    """How a model's second version (named by the rollout's alias) takes part in serving."""

    OFF = "off"
    """Production answers every request."""
    CANARY = "canary"
    """The second version answers `percent` of requests instead of production."""
    SHADOW = "shadow"
    """Production answers every request; `percent` of them are also sent to the second
    version, whose answers are logged (route ``shadow``) and never returned."""

    @classmethod
    def parse(cls, value: str) -> RolloutMode:
        """`RolloutMode(value)`, raising `InvalidArgument` with the accepted modes."""
        try:
            return cls(value)
        except ValueError:
            modes = ", ".join(m.value for m in cls)
            raise InvalidArgument(f"unknown rollout mode '{value}'; modes: {modes}") from None


@dataclass(frozen=True, slots=True)
class Rollout:
    """A model's rollout now: what `Registry.rollout` returns and servers poll.

    Servers route by it: in canary mode each request goes to ``name@alias`` with probability
    ``percent / 100``; in shadow mode that share of requests is also copied to it. When
    `version` is None (off, or the alias was removed) or equals the production version,
    there is nothing to route to and production answers everything.
    """

    name: str
    mode: RolloutMode
    percent: float
    """Canary: share of requests answered by the second version; shadow: share copied to it;
    0 when off."""
    alias: str
    """The alias naming the second version (``candidate`` by default)."""
    version: int | None
    """The version `alias` points at now (None when off or when the alias is gone)."""
    actor: str | None
    """Who made the latest change; None when the model never had a rollout."""
    reason: str
    updated_at: datetime | None
    """When the latest change happened (UTC); None when the model never had a rollout."""

    @property
    def active(self) -> bool:
        """True in canary or shadow mode."""
        return self.mode is not RolloutMode.OFF

    def describe(self) -> str:
        """One line for people, e.g. ``canary: 10% of requests to digits@candidate (digits:4)``."""
        if not self.active:
            return "off: production answers every request"
        target = f"{self.name}@{self.alias}"
        if self.version is not None:
            target += f" ({self.name}:{self.version})"
        if self.mode is RolloutMode.CANARY:
            return f"canary: {self.percent:g}% of requests answered by {target}"
        return f"shadow: {self.percent:g}% of requests copied to {target} (answers only logged)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode.value,
            "percent": self.percent,
            "alias": self.alias,
            "version": self.version,
            "actor": self.actor,
            "reason": self.reason,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """One row of a model's rollout history."""

    name: str
    mode: RolloutMode
    percent: float
    alias: str
    candidate_version: int | None
    """The version `alias` pointed at when the change was made (None when it pointed nowhere)."""
    production_version: int | None
    """The version ``production`` pointed at when the change was made."""
    at: datetime
    actor: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode.value,
            "percent": self.percent,
            "alias": self.alias,
            "candidate_version": self.candidate_version,
            "production_version": self.production_version,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
        }
