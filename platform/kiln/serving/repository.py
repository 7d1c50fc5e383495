"""Where served models come from: the registry's versions, opened as engines.

The core asks four things of a repository: which version a reference names now and what a
model's rollout is (the alias watcher asks both every poll, so they must be cheap), to open a
version as an engine (slow: verifies the artifact's sha256 and builds the engine), and which
models exist (for the repository index). All of them block; the core calls them on a worker
thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kiln.registry import Reference, Registry, RolloutMode
from kiln.registry.loader import open_engine
from kiln.traffic import Route
from kiln_engines import Engine, EngineOptions


@dataclass(frozen=True, slots=True)
class OpenedEngine:
    """An engine and what it was opened from."""

    engine: Engine
    kind: str
    """The artifact kind: onnxruntime, onnx, aotinductor or tensorrt."""
    device: str
    """Where it runs: cpu, cuda, cuda:N."""
    sha256: str
    task: str = "classification"
    """The version's task (`config["task"]`): whether its feedback is a label or a value."""


@dataclass(frozen=True, slots=True)
class RolloutState:
    """A model's running canary or shadow, as the serving core follows it."""

    route: Route
    """`Route.CANARY` (a share of requests answered by `version`) or `Route.SHADOW` (a share
    copied to it, its answers only logged)."""
    percent: float
    """The share of requests, in (0, 100]."""
    alias: str
    """The alias naming the second version (`candidate` by default)."""
    version: int | None
    """The version `alias` points at now; None when the alias is gone (nothing to route to)."""


class ModelRepository(Protocol):
    """What the serving core needs from wherever models live."""

    def resolve(self, reference: Reference) -> int:
        """The version `reference` names now; raises `NotFound` subclasses saying what exists."""
        ...

    def open(self, name: str, version: int) -> OpenedEngine:
        """Open version `version` of `name` as an engine, choosing the artifact to run."""
        ...

    def model_names(self) -> list[str]:
        """Every model the repository holds, by name."""
        ...

    def rollout(self, name: str) -> RolloutState | None:
        """The model's running canary or shadow; None when it has none (rollout off)."""
        ...


class RegistryRepository:
    """Kiln's registry as a model repository.

    `open` loads the fastest artifact this host can run (`kiln.registry.loader`: TensorRT, then
    AOTInductor on CUDA, then onnxruntime), or the kind `engine_kind` names, with `options`
    (threads); the artifact's sha256 is verified first.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        options: EngineOptions | None = None,
        engine_kind: str | None = None,
    ) -> None:
        self._registry = registry
        self._options = options or EngineOptions()
        self._engine_kind = engine_kind

    def resolve(self, reference: Reference) -> int:
        return self._registry.version_of(reference)  # one indexed query: the polling path

    def open(self, name: str, version: int) -> OpenedEngine:
        engine, artifact = open_engine(
            self._registry, name, version, self._options, kind=self._engine_kind
        )
        task = self._registry.get_version(name, version).config.get("task") or "classification"
        return OpenedEngine(engine, artifact.kind.value, engine.device, artifact.sha256, str(task))

    def model_names(self) -> list[str]:
        return [m.name for m in self._registry.list_models()]

    def rollout(self, name: str) -> RolloutState | None:
        state = self._registry.rollout(name)  # one indexed query: the polling path
        if state.mode is RolloutMode.OFF:
            return None
        route = Route.CANARY if state.mode is RolloutMode.CANARY else Route.SHADOW
        return RolloutState(route, state.percent, state.alias, state.version)
