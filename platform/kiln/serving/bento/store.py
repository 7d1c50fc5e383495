"""Kiln versions in BentoML's model store, so a built Bento serves without a Kiln registry.

`export_version` copies a version's engine artifact (onnxruntime by default: portable, no
torch needed), a text version's tokenizer, and a `kiln.json` manifest into the store as
`kiln-<name>:v<version>`. `StoreRepository` is the serving core's model repository over such
an entry; it verifies the engine's (and tokenizer's) sha256 before loading it, as the registry
does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml

from kiln.errors import ArtifactCorrupted, ArtifactNotFound, InvalidArgument, ModelNotFound
from kiln.registry import ArtifactKind, Reference, Registry
from kiln.serving.repository import OpenedEngine, RolloutState
from kiln.text import TextTokenizer
from kiln_engines import EngineOptions, load

PREFIX = "kiln-"
MANIFEST = "kiln.json"
# Engines a Bento can carry: onnxruntime and onnx run wherever onnxruntime does; AOTInductor
# packages run where torch does; TensorRT plans only on the GPU they were built for.
EXPORTABLE = ("onnxruntime", "onnx", "aotinductor", "tensorrt")
TOKENIZER_FILE = "tokenizer.json"
"""A text version's tokenizer, beside its engine."""


def store_tag(name: str, version: int) -> str:
    return f"{PREFIX}{name}:v{version}"


@dataclass(frozen=True)
class ExportResult:
    tag: str
    kind: str
    sha256: str
    path: str
    created: bool


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_version(registry: Registry, reference: str, kind: str = "onnxruntime") -> ExportResult:
    """Put `reference`'s `kind` engine and config into BentoML's model store (idempotent)."""
    if kind not in EXPORTABLE:
        raise InvalidArgument(f"cannot export engine kind '{kind}'; choose one of {EXPORTABLE}")
    version = registry.resolve(reference)
    held = registry.artifacts(version.name, version.version)
    artifacts = [a for a in held if a.kind.value == kind]
    if not artifacts:
        have = ", ".join(sorted({a.kind.value for a in held if a.kind.is_engine}))
        raise ArtifactNotFound(
            f"{version.ref} has no {kind} engine (it has: {have or 'only a checkpoint'}); "
            f"run `kiln compile {version.ref} --target {kind}` first"
        )
    artifact = artifacts[0]
    tag = store_tag(version.name, version.version)
    try:
        existing = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        existing = None
    if existing is not None:
        stored = json.loads(Path(existing.path_of(MANIFEST)).read_text())
        if stored.get("sha256") != artifact.sha256:
            raise InvalidArgument(
                f"BentoML's store already has {tag} with another engine; remove it first with "
                f"`bentoml models delete {tag}`"
            )
        return ExportResult(tag, kind, artifact.sha256, existing.path, created=False)

    source = registry.artifact_file(artifact)  # verifies the sha256
    filename = f"engine{source.suffix or '.bin'}"
    manifest: dict[str, Any] = {
        "format": 1,
        "name": version.name,
        "version": version.version,
        "kind": kind,
        "filename": filename,
        "sha256": artifact.sha256,
        "target": dict(artifact.target),
        "class_names": list(version.config.get("class_names", [])),
        "config": dict(version.config),
        "source": version.ref,
    }
    tokenizer = None
    if version.config.get("text"):
        # A text version serves strings only with the tokenizer it was trained with.
        tokenizers = registry.artifacts(version.name, version.version, ArtifactKind.TOKENIZER)
        if not tokenizers:
            raise ArtifactNotFound(
                f"{version.ref} is a text model but has no tokenizer artifact to export with it"
            )
        tokenizer = registry.artifact_file(tokenizers[-1])  # verifies the sha256
        manifest["tokenizer"] = {"filename": TOKENIZER_FILE, "sha256": tokenizers[-1].sha256}
    with bentoml.models.create(
        tag,
        labels={"kiln.model": version.name, "kiln.version": str(version.version), "kind": kind},
        metadata={"kiln.source": version.ref, "sha256": artifact.sha256},
    ) as model:
        shutil.copyfile(source, model.path_of(filename))
        if tokenizer is not None:
            shutil.copyfile(tokenizer, model.path_of(TOKENIZER_FILE))
        Path(model.path_of(MANIFEST)).write_text(json.dumps(manifest, indent=2))
    return ExportResult(tag, kind, artifact.sha256, model.path, created=True)


def find_exported(tag: str | None = None) -> str:
    """The store tag to serve: `tag`, or the only `kiln-*` model in the store."""
    if tag:
        return tag
    tags = sorted(str(m.tag) for m in bentoml.models.list() if m.tag.name.startswith(PREFIX))
    if len(tags) != 1:
        found = ", ".join(tags) or "none"
        raise ModelNotFound(
            f"cannot tell which Kiln model to serve from BentoML's store (kiln models: {found}); "
            "set KILN_BENTO_MODEL=kiln-NAME:vVERSION, or KILN_MODEL=NAME@ALIAS to serve from the "
            "registry"
        )
    return tags[0]


class StoreRepository:
    """One exported version in BentoML's model store, as a serving-core model repository."""

    def __init__(self, tag: str, options: EngineOptions | None = None) -> None:
        try:
            self._model = bentoml.models.get(tag)
        except bentoml.exceptions.NotFound as exc:
            raise ModelNotFound(
                f"BentoML's model store has no '{tag}'; export one with `kiln bento export REF`"
            ) from exc
        self._dir = Path(self._model.path)
        self.manifest: dict[str, Any] = json.loads((self._dir / MANIFEST).read_text())
        self._options = options or EngineOptions()

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    def resolve(self, reference: Reference) -> int:
        if reference.name != self.name:
            raise ModelNotFound(f"this Bento serves '{self.name}', not '{reference.name}'")
        return self.version

    def open(self, name: str, version: int) -> OpenedEngine:
        self.resolve(Reference(name, version, None))
        path = self._dir / str(self.manifest["filename"])
        actual = _sha256(path)
        if actual != self.manifest["sha256"]:
            raise ArtifactCorrupted(
                f"{path} does not match its manifest: expected sha256 {self.manifest['sha256']}, "
                f"found {actual}; export the version again"
            )
        config = self.manifest.get("config") or {}
        tokenizer, tokenizer_sha256 = self._tokenizer() if config.get("text") else (None, "")
        engine = load(path, str(self.manifest["kind"]), self._options)
        task = config.get("task") or "classification"
        return OpenedEngine(
            engine, str(self.manifest["kind"]), engine.device, actual, str(task),
            tokenizer, tokenizer_sha256,
        )  # fmt: skip

    def _tokenizer(self) -> tuple[TextTokenizer, str]:
        """A text version's tokenizer, exported beside its engine (sha256 verified)."""
        entry = self.manifest.get("tokenizer")
        if not entry:
            raise ArtifactNotFound(
                f"{self._model.tag} is a text model exported without its tokenizer; export the "
                "version again (`kiln bento export REF`) to carry it"
            )
        path = self._dir / str(entry["filename"])
        actual = _sha256(path)
        if actual != entry["sha256"]:
            raise ArtifactCorrupted(
                f"{path} does not match its manifest: expected sha256 {entry['sha256']}, "
                f"found {actual}; export the version again"
            )
        return TextTokenizer.from_file(path), actual

    def model_names(self) -> list[str]:
        return [self.name]

    def rollout(self, name: str) -> RolloutState | None:
        """Always off: a Bento built from the store carries one version and no rollouts."""
        return None
