"""Retraining a version registered from a user's PyTorch module (`kiln register --module`).

Kiln can train such a model further because it can rebuild it: the version's config names the
builder and its arguments, and its checkpoint blob is the module's safetensors weights. The
module is rebuilt exactly as `kiln compile` rebuilds it (`kiln.sources.open_version_source`),
warm-started from those weights, and fine-tuned by Kiln's own training loop on the same mix of
data and labelled traffic as a version Kiln trained (`kiln.loop.retrain`). The user's module
is trained as it is, never wrapped: class scores under cross-entropy, or raw-unit values under
the parent's regression loss taken on standardised values (`kiln.train.objectives`). The new
version is again a module source (same builder, arguments, signature, task, classes and data
set), whose weights are the new safetensors file, so it compiles, serves and retrains like its
parent.

Only a one-input, one-output module with a recorded data set can be retrained: the data set
is what the labelled traffic is mixed into (traffic alone would make it forget), and Kiln's
loop feeds one input tensor and learns from one output.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from safetensors.torch import save_file
from torch import nn

from kiln.errors import FailedPrecondition, KilnError
from kiln.registry import Lineage, ModelVersion, Registry
from kiln.sources import open_version_source
from kiln.train import TrainConfig, TrainResult
from kiln_engines import Signature

KEPT_KEYS = ("task", "class_names", "signature", "dataset", "split", "seed", "input_name")
"""What a retrained module version keeps of its parent's config as it is."""


def is_module_source(parent: ModelVersion) -> bool:
    return (parent.config.get("source") or {}).get("kind") == "module"


def check_module_source(parent: ModelVersion) -> None:
    """Refuse, saying why and what to do, a module version Kiln's loop cannot retrain."""
    config = parent.config
    builder = (config.get("source") or {}).get("builder", "?")
    signature = Signature.from_dict(config["signature"])
    inputs, outputs = signature.input_names, signature.output_names
    instead = (
        f"Train the next version where this one was made and `kiln register {parent.name} "
        f"--module {builder} --weights new.safetensors ...`"
    )
    if len(inputs) != 1 or len(outputs) != 1:
        raise FailedPrecondition(
            f"cannot retrain {parent.ref}: its module takes {len(inputs)} input(s) "
            f"({', '.join(inputs)}) and returns {len(outputs)} output(s) "
            f"({', '.join(outputs)}); Kiln's training loop feeds one input tensor and learns "
            f"from one output (class scores or values). {instead}"
        )
    if not config.get("dataset"):
        raise FailedPrecondition(
            f"cannot retrain {parent.ref}: it was registered without --dataset, so Kiln has no "
            "data set to mix the labelled traffic into (traffic alone would make the model "
            f"forget what it learned). Register it again with `kiln register {parent.name} "
            f"--module {builder} --weights ... --dataset REF` (a data set of its input's shape), "
            f"then retrain that version; or: {instead}"
        )
    dtype = signature.inputs[0].dtype
    if dtype != "float32":
        raise FailedPrecondition(
            f"cannot retrain {parent.ref}: its input '{inputs[0]}' is {dtype}, and Kiln's data "
            f"sets and logged inputs are float32. {instead}"
        )


def rebuild(registry: Registry, parent: ModelVersion) -> nn.Module:
    """The parent's module with its registered weights, as `kiln compile` rebuilds it."""
    blob = registry.artifact_file(registry.checkpoint(parent.name, parent.version))
    try:
        module = open_version_source(parent.config, blob).module
    except KilnError as exc:
        builder = (parent.config.get("source") or {}).get("builder", "?")
        raise FailedPrecondition(
            f"cannot retrain {parent.ref}: its module cannot be rebuilt here ({exc.message}); "
            f"make '{builder}' importable (install its package, or run from the directory "
            "that holds it)"
        ) from exc
    assert module is not None
    return module


def module_train_config(parent: ModelVersion, task: str) -> TrainConfig:
    """The task's defaults (or what the parent's own retraining recorded) for its module."""
    source = parent.config.get("source") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    recorded = {k: v for k, v in (parent.config.get("train") or {}).items() if k in known}
    return TrainConfig.for_task(
        task,
        **recorded
        | {
            "dataset": str(parent.config["dataset"]),
            "model": str(source.get("builder")),
            "model_args": dict(source.get("model_args") or {}),
        },
    )


def register_module_result(
    registry: Registry,
    parent: ModelVersion,
    module: nn.Module,
    result: TrainResult,
    retrain_info: dict[str, Any],
) -> ModelVersion:
    """Register `module` (trained by `result`'s run) as the next version of `parent`'s model:
    a module source with new weights and `retrain_info` under config["retrain"]."""
    weights = result.run_dir / f"{parent.name}-from-v{parent.version}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
              str(weights))  # fmt: skip
    with open(weights, "rb") as fh:
        sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
    source = dict(parent.config["source"]) | {
        "filename": weights.name,
        "sha256": sha256,
        "registered_by": "kiln retrain",
    }
    config = {k: parent.config[k] for k in KEPT_KEYS if k in parent.config} | {
        "source": source,
        "data_fingerprint": result.dataset.fingerprint,
        "reference": result.config.reference,
        "train": result.config.train,
        "run_id": result.run_id,
        "retrain": retrain_info,
    }
    return registry.register_version(
        parent.name,
        checkpoint=weights,
        config=config,
        metrics=result.config.metrics,
        lineage=Lineage(
            dataset=result.dataset.name,
            data_fingerprint=result.dataset.fingerprint,
            parent_version=parent.version,
            run_id=result.run_id,
            git_commit=parent.lineage.git_commit if parent.lineage else None,
        ),
        description=f"retrained from {parent.ref} on {retrain_info['trained_on']} labelled "
        "requests",
    )
