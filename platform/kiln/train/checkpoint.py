"""Checkpoints: weights in safetensors, config in JSON, and the config embedded in the weights.

A checkpoint directory holds `model.safetensors` and `config.json`. The safetensors header
also carries the config under "kiln.config", so the single file a registry stores is enough
to rebuild the model. No pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kiln.errors import CheckpointInvalid
from kiln.train.builders import Classifier, Regressor, build_model, build_regressor
from kiln.train.config import CheckpointConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METADATA_KEY = "kiln.config"


@dataclass
class LoadedCheckpoint:
    model: Classifier | Regressor
    """A `Regressor` when `config.task` is "regression", else a `Classifier`."""
    config: CheckpointConfig


def save_checkpoint(model: torch.nn.Module, config: CheckpointConfig, directory: Path) -> Path:
    """Write weights and config into `directory`; returns the .safetensors path."""
    directory.mkdir(parents=True, exist_ok=True)
    # Save the unwrapped module: a torch.compile'd one would prefix every key with _orig_mod.
    module = getattr(model, "_orig_mod", model)
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    text = config.model_dump_json()
    weights = directory / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
    tmp.replace(weights)
    (directory / CONFIG).write_text(json.dumps(json.loads(text), indent=2) + "\n")
    return weights


def read_config(path: Path) -> CheckpointConfig:
    """Read the config of a checkpoint directory or .safetensors file without loading weights."""
    weights = path / WEIGHTS if path.is_dir() else path
    try:
        with safe_open(str(weights), framework="pt") as fh:
            text = (fh.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as exc:
        raise CheckpointInvalid(
            f"cannot read checkpoint {weights}: {exc}; the file is missing, truncated or not "
            "safetensors (retrain, or fetch the version's artifact from the registry again)"
        ) from exc
    if text is None:
        sidecar = weights.parent / CONFIG
        if not sidecar.is_file():
            raise CheckpointInvalid(
                f"{weights} carries no Kiln config and there is no {CONFIG} beside it"
            )
        text = sidecar.read_text()
    try:
        return CheckpointConfig.model_validate_json(text)
    except ValidationError as exc:
        raise CheckpointInvalid(f"the config of checkpoint {weights} is invalid: {exc}") from exc


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint directory or .safetensors file, in eval mode: a
    classifier, or a regressor when the config's task says so."""
    path = Path(path)
    config = read_config(path)
    weights = path / WEIGHTS if path.is_dir() else path
    model: Classifier | Regressor
    if config.task == "regression":
        model = build_regressor(
            config.builder,
            config.input_shape,
            normalization=config.normalization,
            target_normalization=config.target_normalization,
            **config.builder_args,
        )
    else:
        model = build_model(
            config.builder,
            config.input_shape,
            config.num_classes,
            normalization=config.normalization,
            **config.builder_args,
        )
    try:
        with safe_open(str(weights), framework="pt") as fh:
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointInvalid(
            f"weights in {weights} do not fit the '{config.builder}' model its config describes: "
            f"{exc}"
        ) from exc
    model.eval()
    return LoadedCheckpoint(model, config)
