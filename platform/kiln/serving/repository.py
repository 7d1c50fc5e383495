"""Where served models come from: the registry's versions, opened as engines.

The core asks four things of a repository: which version a reference names now and what a
model's rollout is (the alias watcher asks both every poll, so they must be cheap), to open a
version as an engine (slow: verifies the artifact's sha256 and builds the engine), and which
models exist (for the repository index). All of them block; the core calls them on a worker
thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kiln.errors import ArtifactCorrupted, ArtifactNotFound
from kiln.registry import ArtifactKind, Reference, Registry, RolloutMode
from kiln.registry.loader import open_engine
from kiln.text import TextTokenizer
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
    tokenizer: TextTokenizer | None = None
    """A text model's tokenizer (its version's `tokenizer` artifact); None for other models."""
    tokenizer_sha256: str = ""
    """The tokenizer artifact's sha256 (verified when it was read)."""


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
        try:
            config = self._registry.get_version(name, version).config
            task = config.get("task") or "classification"
            tokenizer, tokenizer_sha256 = (
                open_tokenizer(self._registry, name, version, config)
                if config.get("text")
                else (None, "")
            )
        except BaseException:
            engine.close()
            raise
        return OpenedEngine(
            engine, artifact.kind.value, engine.device, artifact.sha256, str(task),
            tokenizer, tokenizer_sha256,
        )  # fmt: skip

    def model_names(self) -> list[str]:
        return [m.name for m in self._registry.list_models()]

    def rollout(self, name: str) -> RolloutState | None:
        state = self._registry.rollout(name)  # one indexed query: the polling path
        if state.mode is RolloutMode.OFF:
            return None
        route = Route.CANARY if state.mode is RolloutMode.CANARY else Route.SHADOW
        return RolloutState(route, state.percent, state.alias, state.version)


def open_tokenizer(
    registry: Registry, name: str, version: int, config: Mapping[str, Any]
) -> tuple[TextTokenizer, str]:
    """The tokenizer a text version (`config["text"]`) was trained with, and its sha256.

    Read from the version's `tokenizer` artifact, whose bytes are verified against their
    sha256 like an engine's (`ArtifactCorrupted` otherwise); a text version without one is
    `ArtifactNotFound` saying how to attach it. When the config records the tokenizer's
    sha256, the artifact must be that tokenizer.
    """
    found = registry.artifacts(name, version, ArtifactKind.TOKENIZER)
    if not found:
        raise ArtifactNotFound(
            f"{name}:{version} is a text model (its config has `text`) but has no tokenizer "
            "artifact, so it cannot tokenise strings; attach the tokenizer it was trained "
            "with (Registry.add_artifact(..., kind='tokenizer', path='tokenizer.json')) or "
            "register the version again with it"
        )
    artifact = found[-1]
    recorded = (config.get("text") or {}).get("sha256")
    if recorded and recorded != artifact.sha256:
        raise ArtifactCorrupted(
            f"{name}:{version}'s tokenizer artifact has sha256 {artifact.sha256}, but the "
            f"version was trained with tokenizer {recorded} (config text.sha256); attach "
            "the tokenizer.json the version was trained with"
        )
    path = registry.artifact_file(artifact)  # verifies the sha256
    return TextTokenizer.from_file(path), artifact.sha256
