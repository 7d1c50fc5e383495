"""Classification metrics on a held-out split: accuracy, per class, confusion, calibration."""

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
