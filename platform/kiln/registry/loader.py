"""Loading a registered version as an inference engine (`kiln_engines.Engine`): the fastest
artifact this host can run.

Serving, evaluation gates and the demo all need "run version N here"; the choice
(`kiln_engines.choose`: TensorRT, then AOTInductor on CUDA, then onnxruntime) and the sha256
check (`Registry.artifact_file`) happen here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import ArtifactNotFound
from kiln.registry.records import Artifact
from kiln.registry.registry import Registry
from kiln_engines import Candidate, Engine, EngineOptions, Selection, choose, load


@dataclass(frozen=True, slots=True)
class ChosenArtifact:
    artifact: Artifact
    selection: Selection


def choose_artifact(
    registry: Registry, name: str, version: int, *, kind: str | None = None
) -> ChosenArtifact:
    """The engine artifact of `name:version` to load here (`kind` overrides the preference).

    Raises `ArtifactNotFound` when the version has only its checkpoint, saying how to compile.
    """
    artifacts = [a for a in registry.artifacts(name, version) if a.kind.is_engine]
    candidates = {Candidate(a.kind.value, str(a.target.get("device", "any"))): a for a in artifacts}
    if not candidates:
        raise ArtifactNotFound(
            f"{name}:{version} has no compiled engine, only its checkpoint; run "
            f"`kiln compile {name}:{version}` first"
        )
    selection = choose(candidates, override=kind)
    return ChosenArtifact(candidates[selection.candidate], selection)


def open_engine(
    registry: Registry,
    name: str,
    version: int,
    options: EngineOptions | None = None,
    *,
    kind: str | None = None,
) -> tuple[Engine, Artifact]:
    """Load the chosen engine of `name:version` (its bytes verified against their sha256)."""
    chosen = choose_artifact(registry, name, version, kind=kind)
    base = options or EngineOptions()
    path = registry.artifact_file(chosen.artifact)
    engine = load(
        path,
        chosen.artifact.kind.value,
        EngineOptions(
            device=chosen.selection.device,
            intra_op_threads=base.intra_op_threads,
            inter_op_threads=base.inter_op_threads,
            providers=base.providers,
            cache_dir=base.cache_dir,
            allow_rebuild=base.allow_rebuild,
        ),
    )
    return engine, chosen.artifact
