"""Compile a registered version: checkpoint and held-out data in, verified artifacts registered.

The thin layer over `compile_module`: resolve the reference, rebuild the model from its
checkpoint artifact, reload the data set it was trained on with the same split (its test split
is the held-out data for parity, its training split feeds INT8 calibration), compile, and add
every engine that passed parity to the version with its report. Engines that failed are not
registered; the report says why. Versions registered from a user's source (`kiln register`)
compile from that source instead (`kiln.compile.registered_source`). A text version (its config
has `text`) is compiled with its own tokenizer: the held-out and calibration texts are
tokenised by it, and the engines take `input_ids` and `attention_mask` (`kiln.compile.text`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.compile.held_out import HeldOut, recorded, recorded_text
from kiln.compile.pipeline import (
    CompileOptions,
    CompileReport,
    Progress,
    TargetResult,
    compile_module,
)
from kiln.compile.registered_source import compile_source
from kiln.compile.text import TextModel, text_signature
from kiln.errors import CheckpointInvalid
from kiln.registry import Registry
from kiln.registry.records import Artifact, ModelVersion
from kiln.settings import Settings
from kiln.train import CheckpointConfig, load_checkpoint
from kiln_engines import Signature, TensorSpec


@dataclass
class RegisteredCompile:
    """What `compile_version` built, verified and registered for a version."""

    version: ModelVersion
    report: CompileReport
    artifacts: list[Artifact] = field(default_factory=list)
    """The artifacts registered: one per result that passed."""
    notes: list[str] = field(default_factory=list)

    def artifact_of(self, result: TargetResult) -> Artifact | None:
        """The artifact registered for `result` (same kind and device), if any."""
        registered = {(a.kind.value, a.target.get("device")): a for a in self.artifacts}
        return registered.get((result.kind, result.target.get("device")))

    def to_dict(self) -> dict[str, Any]:
        report = self.report.to_dict()
        for result, entry in zip(self.report.results, report["results"], strict=True):
            artifact = self.artifact_of(result)
            entry["artifact"] = (
                {"sha256": artifact.sha256, "size": artifact.size} if artifact else None
            )
        return {"ref": self.version.ref, **report, "notes": self.notes}


def signature_of(config: CheckpointConfig) -> Signature:
    """The engine signature a checkpoint's model has: raw inputs in, class scores (or, for a
    regressor, one predicted value) out. A text model takes `input_ids` and `attention_mask`
    (int64, batch and sequence axes dynamic)."""
    if config.text is not None:
        return text_signature(config.output_width, config.output_name)
    return Signature(
        inputs=(TensorSpec(config.input_name, config.input_dtype, (-1, *config.input_shape)),),
        outputs=(TensorSpec(config.output_name, "float32", (-1, config.output_width)),),
    )


def compile_version(
    registry: Registry,
    ref: str,
    options: CompileOptions,
    settings: Settings,
    *,
    progress: Progress = lambda _: None,
) -> RegisteredCompile:
    """Compile the version `ref` names and register the artifacts that pass parity.

    A trained version is rebuilt from its checkpoint; a registered one (`config["source"]`)
    from its source (`kiln.compile.registered_source`).
    """
    version = registry.resolve(ref)
    blob = registry.artifact_file(registry.checkpoint(version.name, version.version))
    options = dataclasses.replace(options, cache_dir=options.cache_dir or settings.home / "cache")
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.home, prefix="compile-") as tmp:
        if version.config.get("source"):
            report, notes = compile_source(version, blob, options, settings, Path(tmp), progress)
        else:
            report, notes = _compile_trained(version, blob, options, settings, Path(tmp), progress)
        artifacts = []
        for result in report.results:
            if not result.passed or result.path is None:
                continue
            progress(f"registering {result.kind} ({result.device}) with {version.ref}")
            artifacts.append(
                registry.add_artifact(
                    version.name,
                    version.version,
                    kind=result.kind,
                    path=result.path,
                    target=result.target,
                    libraries=result.libraries,
                    report=result.artifact_report(report.precision, report.signature),
                )
            )
    return RegisteredCompile(version, report, artifacts, notes)


def _compile_trained(
    version: ModelVersion,
    blob: Path,
    options: CompileOptions,
    settings: Settings,
    workdir: Path,
    progress: Progress,
) -> tuple[CompileReport, list[str]]:
    progress(f"loading the checkpoint of {version.ref}")
    checkpoint = load_checkpoint(blob)
    config = checkpoint.config
    progress(f"loading held-out data from '{config.dataset}'")
    text = None
    held_out: HeldOut
    if config.text is not None:
        if checkpoint.tokenizer is None:
            raise CheckpointInvalid(
                f"{version.ref} is a text version whose checkpoint has no tokenizer"
            )
        text = TextModel.of_version(
            config.text, config.builder, config.builder_args, checkpoint.model
        )
        held_out = recorded_text(config.model_dump(), version.ref, checkpoint.tokenizer, settings)
    else:
        held_out = recorded(config.model_dump(), version.ref, config.input_name, settings)
    report = compile_module(
        checkpoint.model,
        signature_of(config),
        held_out.inputs,
        workdir,
        options,
        calibration=held_out.calibration,
        progress=progress,
        task=config.task,
        text=text,
    )
    return report, held_out.notes
