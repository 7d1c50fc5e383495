"""Training: model builders, the trainer, checkpoints (safetensors + JSON config), metrics.

Entry points: `train(TrainConfig, Settings) -> TrainResult` (a classifier or a regressor, by
the data set's task), `register_result(registry, name, result) -> ModelVersion`,
`build_model(...)` / `build_regressor(...)` / `build_text_model(...)` (text builders:
`kiln.train.text_builders`), `load_checkpoint(path) -> LoadedCheckpoint`,
`save_checkpoint(...)`.
"""

from __future__ import annotations

from kiln.train.builders import (
    BUILDERS,
    Classifier,
    Regressor,
    build_model,
    build_regressor,
    build_text_model,
)
from kiln.train.checkpoint import LoadedCheckpoint, load_checkpoint, read_config, save_checkpoint
from kiln.train.config import (
    REGRESSION_DEFAULTS,
    TEXT_DEFAULTS,
    CheckpointConfig,
    TrainConfig,
)
from kiln.train.inputs import TokenInputs
from kiln.train.metrics import classification_report, regression_report
from kiln.train.registration import register_result, source_commit
from kiln.train.text_builders import TEXT_BUILDERS
from kiln.train.trainer import TrainResult, predict_logits, train

__all__ = [
    "BUILDERS",
    "REGRESSION_DEFAULTS",
    "TEXT_BUILDERS",
    "TEXT_DEFAULTS",
    "CheckpointConfig",
    "Classifier",
    "LoadedCheckpoint",
    "Regressor",
    "TokenInputs",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_regressor",
    "build_text_model",
    "classification_report",
    "load_checkpoint",
    "predict_logits",
    "read_config",
    "register_result",
    "regression_report",
    "save_checkpoint",
    "source_commit",
    "train",
]
