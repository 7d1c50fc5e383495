"""The model table: which (model, version) engines are loaded, and which version serves a model
by default.

Only the event loop thread reads or changes the table, and a request picks its version and
joins that version's queue in one synchronous step, so swapping `ServedModel.default` is atomic
for requests: each lands either on the old version (which drains before it closes) or on the
new one.

During a canary or shadow rollout, `ModelTable.routing` maps the model's name to a `Routing`:
the second version and the share of requests (by a hash of the request id) it takes. It is
empty when no rollout runs, so requests pay one truthiness check for the feature.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from kiln.errors import (
    InvalidArgument,
    ModelNotReady,
    ModelNotServed,
    VersionNotServed,
    did_you_mean,
    quote,
)
from kiln.registry import Reference
from kiln.registry.references import format_version_ranges
from kiln.serving.batcher import DynamicBatcher
from kiln.serving.messages import ModelDescription
from kiln.serving.metrics import VersionMetrics
from kiln.serving.repository import OpenedEngine
from kiln.serving.statistics import ModelStatistics
from kiln.serving.tokenization import TextStage
from kiln.serving.validation import Validator
from kiln.traffic import Route


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class LoadedModel:
    """One loaded version: its engine, queue, validator, statistics and metrics."""

    name: str
    version: int
    opened: OpenedEngine
    description: ModelDescription
    validator: Validator
    batcher: DynamicBatcher
    statistics: ModelStatistics
    metrics: VersionMetrics
    state: ModelState = ModelState.READY
    text: TextStage | None = None
    """A text model's tokenizer stage (its `validator` is the stage's check); None otherwise."""

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(eq=False)
class ServedModel:
    """A model name and the versions loaded for it."""

    name: str
    reference: Reference
    """Decides the default version: an alias (watched for moves) or a pinned version."""
    default: LoadedModel | None = None
    versions: dict[int, LoadedModel] = field(default_factory=dict)
    pinned: set[int] = field(default_factory=set)
    """Versions loaded by a `name:N` reference: kept when the default moves away from them."""
    failed_version: int | None = None
    """The version the watcher last failed to swap in; not retried until the alias moves."""
    reason: str = ""
    """Why the last load or swap failed, for the repository index."""
    rollout_version: int | None = None
    """The version loaded for the running canary or shadow (kept when the default moves)."""
    rollout_failed: int | None = None
    """The rollout version that failed to load; not retried until the rollout changes."""
    rollout_reason: str = ""
    """Why the rollout's version is not served, for the repository index."""

    @property
    def tracks_alias(self) -> bool:
        return self.reference.version is None

    def by_version(self) -> list[LoadedModel]:
        return [self.versions[v] for v in sorted(self.versions)]


_HASH_RANGE = 1 << 32


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a rollout sends requests that name no version, besides the model's default."""

    route: Route
    """`Route.CANARY`: selected requests are answered by `target`; `Route.SHADOW`: selected
    requests are answered by the default and also copied to `target`."""
    target: LoadedModel
    percent: float
    """The share of requests selected, in (0, 100]."""
    threshold: int = 0
    """Requests whose id hashes below this are selected (derived from `percent`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", round(self.percent / 100 * _HASH_RANGE))

    def selects(self, request_id: str) -> bool:
        """True when this request goes to (canary) or is copied to (shadow) `target`.

        A fixed hash of the id (CRC-32: about 0.2 us, the same in every process and replica),
        so a retried request with the same id lands on the same version. The hold-out slice of
        `kiln.evaluate.labelled` uses SHA-256, so the two selections are independent.
        """
        return (
            self.target.state is ModelState.READY
            and zlib.crc32(request_id.encode()) < self.threshold
        )


class ModelTable:
    """Served models by name, and the lookups requests make (no I/O, event loop only)."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.routing: dict[str, Routing] = {}
        """Running rollouts by model name; changed in place (the core holds this dict)."""

    def __iter__(self) -> Iterator[ServedModel]:
        """Served models in name order."""
        return (self.models[name] for name in sorted(self.models))

    def served(self, name: str) -> ServedModel:
        """The served model `name`; `ModelNotServed` listing what is served otherwise."""
        served = self.models.get(name)
        if served is None:
            names = ", ".join(sorted(self.models)) or "none"
            raise ModelNotServed(
                f"model {quote(name)} is not served here{did_you_mean(name[:64], self.models)}; "
                f"served models: {names} (load a model to serve it)"
            )
        return served

    def version(self, name: str, version: str) -> LoadedModel:
        """Loaded version `version` ("3") of `name`, in whatever state it is."""
        served = self.served(name)
        number = version_number(name, version)
        loaded = served.versions.get(number)
        if loaded is None:
            raise _not_loaded(served, number)
        return loaded

    def loaded_version(self, name: str, version: int) -> LoadedModel:
        """`version` (a parsed reference's number) of `name`, in whatever state it is."""
        served = self.served(name)
        loaded = served.versions.get(version)
        if loaded is None:
            raise _not_loaded(served, version)
        return loaded

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The ready version a request for (`name`, `version`) goes to; "" is the default."""
        if version:
            loaded = self.version(name, version)
        else:
            default = self.served(name).default
            if default is None:
                raise ModelNotReady(f"model {quote(name)} is loading; retry shortly")
            loaded = default
        if loaded.state is not ModelState.READY:
            raise ModelNotReady(f"model {loaded.label} is {loaded.state.lower()}; retry shortly")
        return loaded

    def loaded(self) -> list[LoadedModel]:
        """Every loaded version, by model name and version."""
        return [m for served in self for m in served.by_version()]


def _not_loaded(served: ServedModel, version: int) -> VersionNotServed:
    loaded = format_version_ranges(list(served.versions)) or "none"
    return VersionNotServed(
        f"model '{served.name}' version {version} is not loaded; loaded versions: {loaded} "
        f"(load '{served.name}:{version}' to serve it)"
    )


MAX_VERSION = 2**63 - 1
"""Versions are the registry's int64s; a longer number is a mistake, not a version to look up."""


def version_number(name: str, version: str) -> int:
    """A request's version string as the registry's integer: `VersionNotServed` when it is not
    a number, `InvalidArgument` when it is beyond any version (never int() on a number past
    Python's 4,300-digit limit)."""
    if not version.isascii() or not version.isdigit():
        raise VersionNotServed(
            f"model '{name}' has no version {quote(version)}: versions are positive integers"
        )
    if len(version) > 19 or int(version) > MAX_VERSION:
        raise InvalidArgument(
            f"model_version {quote(version, 24)} is out of range: versions are integers from 1 "
            f"to {MAX_VERSION}"
        )
    return int(version)
