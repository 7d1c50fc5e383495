"""A version's ONNX engine as an NVIDIA Triton model repository (`kiln export triton`).

The repository is what Triton's onnxruntime backend loads:

```
DIR/NAME/config.pbtxt          the model configuration
DIR/NAME/VERSION/model.onnx    the engine, byte for byte the registry's verified artifact
DIR/NAME/labels.txt            a classifier's class names (the output's label_filename)
```

`config.pbtxt` is not written from a template: it is the configuration `kiln serve`'s
ModelConfig RPC answers for the same version and settings (`kiln.serving.description.describe`
► `kiln.serving.grpc.convert.model_config`), so the two cannot drift apart. What only the
export sets on top: the instance count and kind, preferred batch sizes, the label file.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.protobuf import text_format  # type: ignore[import-untyped]

from kiln.errors import ArtifactNotFound, FailedPrecondition, InvalidArgument
from kiln.registry import Artifact, ArtifactKind, ModelVersion, Registry, validate_name
from kiln.serving.description import describe
from kiln.serving.grpc.convert import model_config
from kiln.serving.messages import ModelDescription
from kiln.serving.repository import OpenedEngine, open_tokenizer
from kiln.serving.settings import ServingSettings
from kiln_engines import EngineOptions, load

ONNX_FAMILY: Final = (ArtifactKind.ONNX, ArtifactKind.ONNXRUNTIME)
"""Artifact kinds Triton's onnxruntime backend loads, in the order the export prefers them.
The plain export first: it holds standard ONNX operators only. An `onnxruntime` artifact is
still a valid ONNX model (onnx.checker passes), but its offline graph optimisations may use
onnxruntime's own operators (com.microsoft FusedConv, ...), which need an onnxruntime at least
as new as the one that wrote it: Triton's is the one its release was built with."""

CONFIG_FILE: Final = "config.pbtxt"
ENGINE_FILE: Final = "model.onnx"
LABELS_FILE: Final = "labels.txt"
TOKENIZER_FILE: Final = "tokenizer.json"
"""A text version's tokenizer, beside the config, for the clients that tokenise (Triton
ignores files it does not know in a model's directory)."""

INSTANCE_KINDS: Final = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True, slots=True)
class TritonOptions:
    """What `kiln export triton` sets beyond the serving settings."""

    name: str | None = None
    """The Triton model name (its directory); None: the Kiln model's name."""
    kind: str | None = None
    """`onnx` or `onnxruntime`; None: the first of `ONNX_FAMILY` the version has."""
    instances: int = 1
    """Executions Triton runs at once (instance_group count); `kiln serve` runs one."""
    instance_kind: str = "cpu"
    """`cpu` or `gpu` (KIND_GPU needs Triton's GPU build with the CUDA execution provider)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes Triton runs at once when it can form them; empty: it forms the largest batch
    it can within the queue delay, up to max_batch_size, as Kiln's batcher does."""
    token_ids: bool = False
    """Export a text version's engine with its token-id inputs (clients tokenise)."""
    force: bool = False
    """Replace an existing DIR/NAME (and only it)."""


@dataclass(frozen=True, slots=True)
class TritonExport:
    """What was written, and from what."""

    version: ModelVersion
    artifact: Artifact
    description: ModelDescription
    """The description the config was made from (its name is the Triton model name)."""
    model_dir: Path
    config_path: Path
    engine_path: Path
    labels_path: Path | None
    labels_output: str | None
    """The output the label file belongs to."""
    tokenizer_path: Path | None
    config_text: str
    preferred_batch_sizes: tuple[int, ...]
    instance_kind: str
    replaced: bool
    """Whether an existing DIR/NAME was replaced (--force)."""
    notes: tuple[str, ...]


def export_triton(
    registry: Registry,
    reference: str,
    directory: Path,
    serving: ServingSettings,
    options: TritonOptions | None = None,
) -> TritonExport:
    """Write `reference`'s ONNX-family engine as model `options.name` of the Triton model
    repository `directory` (created if missing).

    Raises `InvalidReference` / `ModelNotFound` / `VersionNotFound` for a reference naming
    nothing, `ArtifactNotFound` when the version has no ONNX-family engine (saying which kinds
    it has and how to build one), `FailedPrecondition` for a text version without
    `token_ids` and for an existing non-empty DIR/NAME without `force`, `InvalidArgument` for
    a DIR that is not a directory and for batching options that contradict each other.
    """
    options = options or TritonOptions()
    if directory.exists() and not directory.is_dir():
        raise InvalidArgument(
            f"{directory} is a file, not a directory; give the model repository's directory "
            "(it is created when missing)"
        )
    if options.instance_kind not in INSTANCE_KINDS:
        raise InvalidArgument(
            f"unknown instance kind '{options.instance_kind}'; choose {' or '.join(INSTANCE_KINDS)}"
        )
    if options.instances < 1:
        raise InvalidArgument(f"--instances must be at least 1, not {options.instances}")
    version = registry.resolve(reference)
    name = validate_name(options.name or version.name, "Triton model name")
    artifact = _onnx_artifact(registry, version, options.kind)
    tokenizer = _tokenizer(registry, version, options.token_ids)
    model_dir = directory / name
    replaced = _check_target(model_dir, options.force)
    engine_file = registry.artifact_file(artifact)  # verifies the sha256
    description = _describe(name, version, artifact, engine_file, serving, options.instances)
    preferred = _preferred(options.preferred_batch_sizes, description.max_batch_size)
    classes = [str(c) for c in version.config.get("class_names") or []]
    labels_output, notes = _labels_output(version, description, classes)
    text = _config_text(
        description, version, artifact, preferred, options.instance_kind, labels_output
    )
    if artifact.kind is ArtifactKind.ONNXRUNTIME:
        made_with = artifact.libraries.get("onnxruntime", "unknown")
        notes.append(
            f"the engine is the onnxruntime-optimised artifact (written by onnxruntime "
            f"{made_with}): Triton's onnxruntime must be at least as new"
        )
    files: dict[str, Path | str] = {
        CONFIG_FILE: text,
        f"{version.version}/{ENGINE_FILE}": engine_file,
    }
    if labels_output is not None:
        files[LABELS_FILE] = "".join(f"{c}\n" for c in classes)
    if tokenizer is not None:
        files[TOKENIZER_FILE] = tokenizer
    _write_atomically(model_dir, files)
    return TritonExport(
        version=version,
        artifact=artifact,
        description=description,
        model_dir=model_dir,
        config_path=model_dir / CONFIG_FILE,
        engine_path=model_dir / str(version.version) / ENGINE_FILE,
        labels_path=model_dir / LABELS_FILE if labels_output is not None else None,
        labels_output=labels_output,
        tokenizer_path=model_dir / TOKENIZER_FILE if tokenizer is not None else None,
        config_text=text,
        preferred_batch_sizes=preferred,
        instance_kind=options.instance_kind,
        replaced=replaced,
        notes=tuple(notes),
    )


def _check_target(model_dir: Path, force: bool) -> bool:
    """Whether `model_dir` holds something the export will replace; refuses without `force`."""
    if not model_dir.exists() and not model_dir.is_symlink():
        return False
    empty = model_dir.is_dir() and not model_dir.is_symlink() and not any(model_dir.iterdir())
    if not empty and not force:
        what = "directory" if model_dir.is_dir() else "file"
        raise FailedPrecondition(
            f"{model_dir} already exists and is a non-empty {what}; pass --force to replace "
            "it (only that model's directory is replaced), or choose another --name or DIR"
        )
    return not empty


def _onnx_artifact(registry: Registry, version: ModelVersion, kind: str | None) -> Artifact:
    held = registry.artifacts(version.name, version.version)
    wanted = ONNX_FAMILY if kind is None else (_family_kind(kind),)
    for want in wanted:
        found = [a for a in held if a.kind is want]
        if found:
            # The latest one, as serving picks among artifacts of one kind and device.
            return found[-1]
    have = sorted({a.kind.value for a in held if a.kind is not ArtifactKind.TOKENIZER})
    family = " or ".join(k.value for k in wanted)
    raise ArtifactNotFound(
        f"{version.ref} has no {family} engine, which Triton's onnxruntime backend needs (it "
        f"has: {', '.join(have) or 'nothing'}); build one with `kiln compile {version.ref} "
        "--target onnxruntime` (at fp32 it registers the plain onnx export too)"
    )


def _family_kind(kind: str) -> ArtifactKind:
    parsed = ArtifactKind.parse(kind)
    if parsed not in ONNX_FAMILY:
        names = " or ".join(k.value for k in ONNX_FAMILY)
        raise InvalidArgument(
            f"Triton's onnxruntime backend cannot load a '{kind}' artifact; --kind takes {names}"
        )
    return parsed


def _tokenizer(registry: Registry, version: ModelVersion, token_ids: bool) -> Path | None:
    """A text version's verified tokenizer file when the export may go ahead without it."""
    if not version.config.get("text"):
        return None
    if not token_ids:
        raise FailedPrecondition(
            f"{version.ref} is a text model: `kiln serve` tokenises its `text` input with the "
            "version's tokenizer, which Triton's onnxruntime backend cannot do. Pass "
            "--token-ids to export the engine as it is, taking token ids (clients then "
            f"tokenise with the {TOKENIZER_FILE} written beside the config)"
        )
    open_tokenizer(registry, version.name, version.version, version.config)  # checks it
    tokenizers = registry.artifacts(version.name, version.version, ArtifactKind.TOKENIZER)
    return registry.artifact_file(tokenizers[-1])


def _describe(
    name: str,
    version: ModelVersion,
    artifact: Artifact,
    engine_file: Path,
    serving: ServingSettings,
    instances: int,
) -> ModelDescription:
    """What `kiln serve` would report for the version, opening the very file exported (so the
    export also proves onnxruntime loads it)."""
    with load(engine_file, artifact.kind.value, EngineOptions(intra_op_threads=1)) as engine:
        opened = OpenedEngine(
            engine,
            artifact.kind.value,
            engine.device,
            artifact.sha256,
            str(version.config.get("task") or "classification"),
        )
        description = describe(name, version.version, opened, serving)
    return dataclasses.replace(description, instances=instances)


def _preferred(sizes: Sequence[int], max_batch: int) -> tuple[int, ...]:
    if not sizes:
        return ()
    if not max_batch:
        raise InvalidArgument(
            "--preferred-batch-size needs batching, but this export has max_batch_size 0 (the "
            "option, or an engine without a dynamic batch axis); drop --preferred-batch-size"
        )
    wrong = [s for s in sizes if not 1 <= s <= max_batch]
    if wrong:
        raise InvalidArgument(
            f"preferred batch size(s) {', '.join(map(str, wrong))} outside 1..{max_batch} "
            "(max_batch_size); give sizes within it"
        )
    return tuple(sorted(set(sizes)))


def _labels_output(
    version: ModelVersion, description: ModelDescription, classes: list[str]
) -> tuple[str | None, list[str]]:
    """The output a classifier's label file belongs to (the first whose last dimension has one
    entry per class), and notes on why there is none."""
    if (version.config.get("task") or "classification") != "classification":
        return None, []
    if not classes:
        return None, [f"{version.ref} records no class names: no label file written"]
    bad = [c for c in classes if "\n" in c or "\r" in c]
    if bad:
        raise InvalidArgument(
            f"class name {bad[0]!r} holds a line break, which a Triton label file (one name "
            "a line) cannot carry; register the version with class names on one line each"
        )
    for spec in description.outputs:
        if spec.shape and spec.shape[-1] == len(classes):
            return spec.name, []
    return None, [
        f"no output has {len(classes)} entries in its last dimension (one per class name): "
        "no label file written"
    ]


def _config_text(
    description: ModelDescription,
    version: ModelVersion,
    artifact: Artifact,
    preferred: tuple[int, ...],
    instance_kind: str,
    labels_output: str | None,
) -> str:
    config: Any = model_config(description).config
    for group in config.instance_group:
        group.kind = INSTANCE_KINDS[instance_kind]
    if preferred:
        config.dynamic_batching.preferred_batch_size.extend(preferred)
    for output in config.output:
        if output.name == labels_output:
            output.label_filename = LABELS_FILE
    header = (
        f"# Written by `kiln export triton` from {version.ref}, {artifact.kind.value} engine\n"
        f"# sha256 {artifact.sha256}.\n"
        "# Triton serves it from the repository that holds this folder:\n"
        "#   tritonserver --model-repository REPOSITORY\n"
    )
    return header + str(text_format.MessageToString(config))


def _write_atomically(model_dir: Path, files: dict[str, Path | str]) -> None:
    """Write the model's directory beside it, then rename it into place: a failed export
    leaves the old one (or nothing), never half a model that Triton would try to load."""
    parent = model_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = parent / f".{model_dir.name}.kiln-new-{token}"
    old = parent / f".{model_dir.name}.kiln-old-{token}"
    try:
        for relative, content in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, path)
            else:
                path.write_text(content, encoding="utf-8")
        if model_dir.exists() or model_dir.is_symlink():
            os.replace(model_dir, old)
        try:
            os.replace(staging, model_dir)
        except BaseException:
            if old.exists() or old.is_symlink():
                os.replace(old, model_dir)  # put the old model back
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old.exists() or old.is_symlink():
        old.unlink()
