"""Training curves as a PNG: loss and a metric per epoch (accuracy for a classifier, RMSE for a
regressor), train against validation."""

from __future__ import annotations

from pathlib import Path

METRIC_LABELS = {"accuracy": "accuracy", "rmse": "RMSE (target units)"}


def plot_curves(
    history: list[dict[str, float]],
    path: Path,
    title: str,
    *,
    metric: str = "accuracy",
    loss_label: str = "cross-entropy",
) -> Path:
    """Plot `history` (the trainer's rows: train_/val_ loss and `metric`) into `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    # Long regression runs: markers on every one of hundreds of epochs would hide the line.
    style = "o-" if len(epochs) <= 50 else "-"
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], style, label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], style, label="validation")
    ax_loss.set(xlabel="epoch", ylabel=loss_label, title="loss")
    label = METRIC_LABELS.get(metric, metric)
    ax_metric.plot(epochs, [r[f"train_{metric}"] for r in history], style, label="train")
    ax_metric.plot(epochs, [r[f"val_{metric}"] for r in history], style, label="validation")
    ax_metric.set(xlabel="epoch", ylabel=label, title=metric if metric != "rmse" else "RMSE")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
