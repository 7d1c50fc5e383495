"""What a task changes in training: the model around the builder's network, the loss, the
metric logged per epoch, the test metrics and the checkpoint's task fields.

The trainer's loop is one loop for both tasks; it asks its `Objective` for these pieces. The
classification objective does exactly what the trainer did before regression existed (same
operations in the same order), so classifiers train to the same weights and metrics.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kiln.data import REGRESSION, Dataset
from kiln.data.profile import PROFILE_FORMAT, prediction_profile, reference_profile
from kiln.text import TEXT_INPUT, TextTokenizer
from kiln.train.builders import (
    Regressor,
    StandardizedRegressor,
    build_model,
    build_regressor,
    build_text_model,
)
from kiln.train.config import TrainConfig
from kiln.train.metrics import classification_report, regression_report

MIN_TARGET_STD = 1e-6
"""Floor for the training targets' std (validation refuses constant targets; a retraining
mix could still be nearly constant), so standardising never divides by zero."""


class Objective(Protocol):
    task: str
    metric: str
    """The per-epoch metric beside the loss: history keys train_<metric>, val_<metric>."""
    loss_label: str
    """How the curves' loss axis is labelled."""

    def build(self, config: TrainConfig, ds: Dataset, norm: dict[str, list[float]]) -> nn.Module:
        """The model to train: raw inputs in, the task's outputs out."""
        ...

    def zero(self) -> torch.Tensor:
        """An empty accumulator for `step`'s second value."""
        ...

    def parallel(self, model: nn.Module) -> nn.Module:
        """The module DistributedDataParallel wraps: its forward must be the pass `step`
        trains through (DDP averages only the gradients of that pass)."""
        ...

    def step(
        self, model: nn.Module, xb: tuple[torch.Tensor, ...], yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss (to back-propagate) and a detached sum for `train_metric`;
        `xb` is the model's positional inputs (one tensor, or a text model's ids and mask)."""
        ...

    def train_metric(self, total: torch.Tensor, seen: int) -> float: ...

    def evaluate(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """A report on held-out outputs with at least "loss" and `metric`."""
        ...

    def test_metrics(self, report: dict[str, Any]) -> dict[str, Any]:
        """The version's test metrics from `evaluate`'s report on the test split."""
        ...

    def checkpoint_fields(self, ds: Dataset) -> dict[str, Any]:
        """CheckpointConfig fields that depend on the task."""
        ...

    def reference(self, ds: Dataset, test_outputs: np.ndarray) -> dict[str, Any]:
        """The drift reference profile stored with the version."""
        ...


class Classification:
    """Cross-entropy on logits; accuracy per epoch; accuracy, ECE and confusion on test."""

    task = "classification"
    metric = "accuracy"
    loss_label = "cross-entropy"

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def build(self, config: TrainConfig, ds: Dataset, norm: dict[str, list[float]]) -> nn.Module:
        return build_model(
            config.model, ds.input_shape, ds.num_classes, normalization=norm, **config.model_args
        )

    def zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.int64)

    def parallel(self, model: nn.Module) -> nn.Module:
        return model

    def step(
        self, model: nn.Module, xb: tuple[torch.Tensor, ...], yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(*xb)
        return F.cross_entropy(logits, yb), (logits.detach().argmax(1) == yb).sum()

    def train_metric(self, total: torch.Tensor, seen: int) -> float:
        return float(total) / seen

    def evaluate(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        return classification_report(outputs, y, self.class_names)

    def test_metrics(self, report: dict[str, Any]) -> dict[str, Any]:
        return {
            "test_accuracy": report["accuracy"],
            "test_loss": report["loss"],
            "ece": report["ece"],
            "per_class_accuracy": report["per_class_accuracy"],
            "confusion": report["confusion"],
            "test_samples": report["samples"],
        }

    def checkpoint_fields(self, ds: Dataset) -> dict[str, Any]:
        return {"class_names": list(ds.class_names)}

    def reference(self, ds: Dataset, test_outputs: np.ndarray) -> dict[str, Any]:
        return reference_profile(ds.train.x, ds.input_shape, test_outputs, ds.test.y)


class TextClassification(Classification):
    """A classifier of texts: the model takes `tokenizer`'s ids and mask; the checkpoint records
    the tokenizer's settings; the reference profile describes texts, not tensors."""

    def __init__(self, class_names: tuple[str, ...], tokenizer: TextTokenizer) -> None:
        super().__init__(class_names)
        self.tokenizer = tokenizer

    def build(self, config: TrainConfig, ds: Dataset, norm: dict[str, list[float]]) -> nn.Module:
        return build_text_model(
            config.model,
            self.tokenizer.vocab_size,
            ds.num_classes,
            pad_id=self.tokenizer.pad_id,
            max_length=self.tokenizer.max_length,
            **config.model_args,
        )

    def checkpoint_fields(self, ds: Dataset) -> dict[str, Any]:
        return super().checkpoint_fields(ds) | {
            "text": self.tokenizer.settings(),
            "input_name": TEXT_INPUT,
            "input_dtype": "string",
        }

    def reference(self, ds: Dataset, test_outputs: np.ndarray) -> dict[str, Any]:
        try:
            from kiln.text.profile import text_reference
        except ImportError:  # before kiln.text.profile existed: predictions only
            return {
                "format": PROFILE_FORMAT,
                "predictions": prediction_profile(test_outputs, ds.test.y),
            }
        return text_reference(
            list(ds.train.x), self.tokenizer, test_outputs, ds.test.y, list(ds.class_names)
        )


class Regression:
    """MSE or Huber on standardised targets; RMSE per epoch; MAE, RMSE and R^2 on test.

    `target` is the training targets' {"mean", "std"}: the model undoes it in its forward,
    so predictions (and every engine's output) are in the target's units.
    """

    task = REGRESSION
    metric = "rmse"

    def __init__(self, loss: str, target: dict[str, float]) -> None:
        self.loss = loss
        self.target = target
        self.loss_label = f"{loss} (standardised target)"

    @staticmethod
    def target_stats(y: np.ndarray) -> dict[str, float]:
        values = np.asarray(y, dtype=np.float64)
        return {"mean": float(values.mean()), "std": max(float(values.std()), MIN_TARGET_STD)}

    def build(self, config: TrainConfig, ds: Dataset, norm: dict[str, list[float]]) -> nn.Module:
        return build_regressor(
            config.model,
            ds.input_shape,
            normalization=norm,
            target_normalization=self.target,
            **config.model_args,
        )

    def zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64)

    def parallel(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, Regressor):
            raise TypeError(f"a regression objective trains a Regressor, not {type(model)}")
        return StandardizedRegressor(model)

    def step(
        self, model: nn.Module, xb: tuple[torch.Tensor, ...], yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inner = model.module if isinstance(model, DistributedDataParallel) else model
        if isinstance(inner, StandardizedRegressor):  # under DDP: through its forward
            regressor, predicted = inner.regressor, model(*xb)[:, 0]
        elif isinstance(inner, Regressor):
            regressor, predicted = inner, inner.standardized(*xb)[:, 0]
        else:
            raise TypeError(f"a regression objective trains a Regressor, not {type(model)}")
        wanted = (yb - regressor.target_mean) / regressor.target_std
        return self.standardized_loss(predicted, wanted, regressor.target_std)

    def standardized_loss(
        self, predicted: torch.Tensor, wanted: torch.Tensor, std: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`step`'s two values from standardised predictions and targets."""
        if self.loss == "huber":
            loss = F.huber_loss(predicted, wanted, delta=1.0)
        else:
            loss = F.mse_loss(predicted, wanted)
        # Squared errors back in the target's units, for the epoch's train RMSE.
        squared = ((predicted.detach() - wanted) * std).double() ** 2
        return loss, squared.sum()

    def train_metric(self, total: torch.Tensor, seen: int) -> float:
        return float(np.sqrt(float(total) / seen))

    def evaluate(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        return regression_report(outputs, y, self.loss, self.target["std"])

    def test_metrics(self, report: dict[str, Any]) -> dict[str, Any]:
        return {
            "test_mae": report["mae"],
            "test_rmse": report["rmse"],
            "test_r2": report["r2"],
            "test_loss": report["loss"],
            "test_samples": report["samples"],
        }

    def checkpoint_fields(self, ds: Dataset) -> dict[str, Any]:
        return {
            "task": REGRESSION,
            "output_name": "prediction",
            "class_names": [],
            "target_normalization": self.target,
        }

    def reference(self, ds: Dataset, test_outputs: np.ndarray) -> dict[str, Any]:
        return reference_profile(
            ds.train.x, ds.input_shape, test_outputs, ds.test.y, task=REGRESSION
        )


class RawRegression(Regression):
    """A regressor Kiln did not build (a user's module, `kiln register --module`): its output
    is the value in the target's units, so the loss standardises that output and the target by
    the training targets' statistics, and the module itself stays as the user wrote it."""

    def build(self, config: TrainConfig, ds: Dataset, norm: dict[str, list[float]]) -> nn.Module:
        raise TypeError("a user's regressor is trained as given (train(..., model=...))")

    def parallel(self, model: nn.Module) -> nn.Module:
        return model  # `step` trains through the module's own forward

    def step(
        self, model: nn.Module, xb: tuple[torch.Tensor, ...], yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.target["mean"], self.target["std"]
        output = model(*xb)
        predicted = (output.reshape(len(output), -1)[:, 0] - mean) / std
        return self.standardized_loss(predicted, (yb - mean) / std, std)
