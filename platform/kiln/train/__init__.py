"""Training: model builders, the trainer, checkpoints (safetensors + JSON config), metrics.

Entry points: `train(TrainConfig, Settings) -> TrainResult`, `register_result(registry, name,
result) -> ModelVersion`, `build_model(...)`, `load_checkpoint(path) -> LoadedCheckpoint`,
`save_checkpoint(...)`.
"""

from __future__ import annotations

from kiln.train.builders import BUILDERS, Classifier, build_model
from kiln.train.checkpoint import LoadedCheckpoint, load_checkpoint, read_config, save_checkpoint
from kiln.train.config import CheckpointConfig, TrainConfig
from kiln.train.metrics import classification_report
from kiln.train.registration import register_result, source_commit
from kiln.train.trainer import TrainResult, predict_logits, train

__all__ = [
    "BUILDERS",
    "CheckpointConfig",
    "Classifier",
    "LoadedCheckpoint",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "classification_report",
    "load_checkpoint",
    "predict_logits",
    "read_config",
    "register_result",
    "save_checkpoint",
    "source_commit",
    "train",
]
