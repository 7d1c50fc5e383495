"""`kiln demo`: the loop on embedded defaults (bundled data, SQLite in KILN_HOME, CPU).

Each stage of the platform adds its step here as it lands; today: train on mnist-5k and
evaluate on the held-out split.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kiln.cli.output import JsonOption, emit, err_console
from kiln.settings import Settings


def demo(
    fast: Annotated[bool, typer.Option(help="Fewer epochs, for CI.")] = False,
    as_json: bool = JsonOption,
) -> None:
    """Run the whole Kiln loop on bundled data and print what each step measured."""
    from kiln.train import TrainConfig, train

    settings = Settings()
    started = time.perf_counter()
    err_console.rule("[bold]1. train a CNN on mnist-5k (real MNIST digits)")
    result = train(
        TrainConfig(dataset="mnist-5k", model="cnn", epochs=2 if fast else 8, seed=0),
        settings,
        show_progress=not as_json,
    )
    m = result.metrics
    payload: dict[str, Any] = {
        "train": {
            "run_id": result.run_id,
            "checkpoint": str(result.checkpoint),
            "test_accuracy": m["test_accuracy"],
            "test_loss": m["test_loss"],
            "ece": m["ece"],
            "per_class_accuracy": m["per_class_accuracy"],
            "duration_s": result.duration_s,
        },
        "duration_s": time.perf_counter() - started,
    }

    def render(console: Console) -> None:
        table = Table(title="kiln demo", show_header=False)
        table.add_column("step", style="bold")
        table.add_column("result")
        table.add_row(
            "train", f"cnn on mnist-5k: test accuracy {m['test_accuracy']:.4f}, "
            f"ECE {m['ece']:.4f}, {result.duration_s:.1f} s"
        )  # fmt: skip
        worst = min(m["per_class_accuracy"].items(), key=lambda kv: kv[1] or 0.0)
        table.add_row("hardest class", f"'{worst[0]}' at {worst[1]:.3f}")
        table.add_row("run", str(result.run_dir))
        table.add_row("total", f"{payload['duration_s']:.1f} s")
        console.print(table)

    emit(payload, as_json, render)
