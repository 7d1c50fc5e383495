"""Metrics on a held-out split: for classifiers accuracy, per class, confusion and calibration;
for regressors MAE, RMSE and R^2."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_report(
    logits: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy, confusion matrix (rows: truth) and ECE."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    pred = logits.argmax(axis=1)
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(axis=1)
    per_class = {
        name: (float(confusion[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float((pred == labels).mean()),
        "loss": float(-log_probs[np.arange(labels.size), labels].mean()),
        "ece": expected_calibration_error(probs, labels),
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "samples": int(labels.size),
    }


def standardized_loss(
    predictions: np.ndarray, targets: np.ndarray, loss: str, target_std: float
) -> float:
    """The training loss on held-out data: MSE or Huber (threshold 1) of the errors in units
    of the training target's standard deviation, as the trainer computes it."""
    error = (np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)) / target_std
    if loss == "huber":
        magnitude = np.abs(error)
        return float(np.where(magnitude <= 1.0, 0.5 * error**2, magnitude - 0.5).mean())
    return float((error**2).mean())


def regression_report(
    predictions: np.ndarray, targets: np.ndarray, loss: str, target_std: float
) -> dict[str, Any]:
    """MAE, RMSE (in the target's units), R^2 and the standardised loss.

    R^2 is 1 - SSE / SST with SST about the split's own mean (scikit-learn's `r2_score`): 0 for
    predicting that mean, negative for worse. `predictions` may be (n,) or (n, 1).
    """
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    truth = np.asarray(targets, dtype=np.float64).reshape(-1)
    error = pred - truth
    total = float(((truth - truth.mean()) ** 2).sum())
    return {
        "loss": standardized_loss(pred, truth, loss, target_std),
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": 1.0 - float((error**2).sum()) / total if total > 0 else 0.0,
        "samples": int(truth.size),
    }
