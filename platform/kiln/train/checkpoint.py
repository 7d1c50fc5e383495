"""Checkpoints: weights in safetensors, config in JSON, and the config embedded in the weights.

A checkpoint directory holds `model.safetensors` and `config.json`. The safetensors header
also carries the config under "kiln.config", so the single file a registry stores is enough
to rebuild the model. No pickle anywhere.

A text model's checkpoint also holds its tokenizer: its JSON under "kiln.tokenizer" in the
safetensors header and as `tokenizer.json` beside the weights (the file registered as the
version's "tokenizer" artifact); `config.text["sha256"]` is the sha256 of both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from kiln.errors import CheckpointInvalid, KilnError
from kiln.text import TextTokenizer
from kiln.train.builders import (
    Classifier,
    Regressor,
    build_model,
    build_regressor,
    build_text_model,
)
from kiln.train.config import CheckpointConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
METADATA_KEY = "kiln.config"
TOKENIZER_KEY = "kiln.tokenizer"


@dataclass
class LoadedCheckpoint:
    model: Classifier | Regressor | nn.Module
    """A `Regressor` when `config.task` is "regression", a text builder's module (forward
    (input_ids, attention_mask)) when `config.text` is set, else a `Classifier`."""
    config: CheckpointConfig
    tokenizer: TextTokenizer | None = None
    """A text model's tokenizer (None for other models)."""


def save_checkpoint(
    model: torch.nn.Module,
    config: CheckpointConfig,
    directory: Path,
    *,
    tokenizer: TextTokenizer | None = None,
) -> Path:
    """Write weights and config (and a text model's `tokenizer`) into `directory`; returns the
    .safetensors path."""
    directory.mkdir(parents=True, exist_ok=True)
    # Save the unwrapped module: a torch.compile'd one would prefix every key with _orig_mod.
    module = getattr(model, "_orig_mod", model)
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    text = config.model_dump_json()
    metadata = {METADATA_KEY: text}
    if tokenizer is not None:
        metadata[TOKENIZER_KEY] = tokenizer.to_json()
        tokenizer.save(directory / TOKENIZER)
    weights = directory / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(weights)
    (directory / CONFIG).write_text(json.dumps(json.loads(text), indent=2) + "\n")
    return weights


def read_tokenizer(path: Path, config: CheckpointConfig) -> TextTokenizer:
    """The tokenizer of a text checkpoint (directory or .safetensors file): from its header,
    else from the `tokenizer.json` beside it; checked against `config.text["sha256"]`."""
    weights = path / WEIGHTS if path.is_dir() else path
    with safe_open(str(weights), framework="pt") as fh:
        text = (fh.metadata() or {}).get(TOKENIZER_KEY)
    if text is None:
        sidecar = weights.parent / TOKENIZER
        if not sidecar.is_file():
            raise CheckpointInvalid(
                f"{weights} is a text model's checkpoint but carries no tokenizer and there is "
                f"no {TOKENIZER} beside it (fetch the version's tokenizer artifact)"
            )
        text = sidecar.read_text(encoding="utf-8")
    try:
        tokenizer = TextTokenizer.from_json(text)
    except KilnError as exc:
        raise CheckpointInvalid(f"the tokenizer of checkpoint {weights} is invalid: {exc}") from exc
    wanted = (config.text or {}).get("sha256")
    if wanted and tokenizer.sha256 != wanted:
        raise CheckpointInvalid(
            f"the tokenizer of checkpoint {weights} has sha256 {tokenizer.sha256}, but its config "
            f"records {wanted}: the checkpoint was altered or mixed with another's tokenizer"
        )
    return tokenizer


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
    classifier, a regressor when the config's task says so, or a text model with its
    tokenizer when the config has `text`."""
    path = Path(path)
    config = read_config(path)
    weights = path / WEIGHTS if path.is_dir() else path
    model: Classifier | Regressor | nn.Module
    tokenizer = None
    if config.text is not None:
        tokenizer = read_tokenizer(path, config)
        model = build_text_model(
            config.builder,
            tokenizer.vocab_size,
            config.num_classes,
            pad_id=tokenizer.pad_id,
            max_length=tokenizer.max_length,
            **config.builder_args,
        )
    elif config.task == "regression":
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
    return LoadedCheckpoint(model, config, tokenizer)
