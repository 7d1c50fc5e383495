"""Where served models come from: the registry's versions, opened as engines.

The core asks three things of a repository: which version a reference names now (the alias
watcher asks every poll, so it must be cheap), to open a version as an engine (slow: verifies
the artifact's sha256 and builds the engine), and which models exist (for the repository
index). All three block; the core calls them on a worker thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kiln.registry import Reference, Registry
from kiln.registry.engines import open_engine
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


class RegistryRepository:
    """Kiln's registry as a model repository.

    `open` loads the fastest artifact this host can run (`kiln.registry.engines`: TensorRT, then
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
        return OpenedEngine(engine, artifact.kind.value, engine.device, artifact.sha256)

    def model_names(self) -> list[str]:
        return [m.name for m in self._registry.list_models()]
