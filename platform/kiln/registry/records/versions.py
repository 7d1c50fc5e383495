"""Records of what a model holds: versions, their artifacts and lineage, model summaries.

Mapping fields (config, metrics, target, ...) are plain dicts decoded from the database for
each record; mutating one changes nothing stored.
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
    """What an artifact file is. Checkpoints are safetensors; a tokenizer is a text model's
    `tokenizer.json` (`kiln.text`); the rest are compiled engines (`ENGINE_KINDS`)."""

    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    AOTINDUCTOR = "aotinductor"
    TOKENIZER = "tokenizer"

    @property
    def is_engine(self) -> bool:
        """Whether serving can run the artifact (not a checkpoint or a tokenizer)."""
        return self not in (ArtifactKind.CHECKPOINT, ArtifactKind.TOKENIZER)

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
