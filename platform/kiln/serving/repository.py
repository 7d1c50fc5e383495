"""Where served models come from: the registry's versions, opened as engines.

The core asks three things of a repository: which version a reference names now (the alias
watcher asks every poll, so it must be cheap), to open a version as an engine (slow: verifies
the artifact's sha256 and builds the engine), and which models exist (for the repository
index). All three block; the core calls them on a worker thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kiln.errors import ArtifactNotFound
from kiln.registry import ArtifactKind, Reference, Registry
from kiln_engines import Candidate, Engine, EngineOptions, choose, load


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

    `open` picks the fastest artifact this host can run (`kiln_engines.choose`: TensorRT, then
    AOTInductor on CUDA, then onnxruntime), or the kind `engine_kind` names, and loads it with
    `options` (threads, device).
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
        artifacts = [
            a
            for a in self._registry.artifacts(name, version)
            if a.kind is not ArtifactKind.CHECKPOINT
        ]
        candidates = {
            Candidate(a.kind.value, str(a.target.get("device", "any"))): a for a in artifacts
        }
        if not candidates:
            raise ArtifactNotFound(
                f"{name}:{version} has no compiled engine to serve, only its checkpoint; run "
                f"`kiln compile {name}:{version}` first"
            )
        selection = choose(candidates, override=self._engine_kind)
        artifact = candidates[selection.candidate]
        path = self._registry.artifact_file(artifact)  # verifies the sha256
        options = EngineOptions(
            device=selection.device,
            intra_op_threads=self._options.intra_op_threads,
            inter_op_threads=self._options.inter_op_threads,
            providers=self._options.providers,
            cache_dir=self._options.cache_dir,
            allow_rebuild=self._options.allow_rebuild,
        )
        engine = load(path, artifact.kind.value, options)
        return OpenedEngine(engine, artifact.kind.value, engine.device, artifact.sha256)

    def model_names(self) -> list[str]:
        return [m.name for m in self._registry.list_models()]
