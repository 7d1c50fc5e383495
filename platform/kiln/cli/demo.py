"""`kiln demo`: the whole loop on bundled data, in KILN_HOME (default ./.kiln)."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.output import JsonOption, emit, err_console
from kiln.settings import Settings


def demo(
    fast: Annotated[bool, typer.Option(help="Fewer epochs and requests (for CI).")] = False,
    as_json: bool = JsonOption,
) -> None:
    """Train, compile, serve, shift the traffic, detect it, retrain, promote, recover."""
    from kiln.loop.demo import DemoOptions, run_demo

    home = Settings().home
    figures = run_demo(
        home,
        DemoOptions(fast=fast, show_progress=not as_json),
        say=lambda m: err_console.print(escape(m), highlight=False),
    )

    def render(console: Console) -> None:
        acc = figures.accuracy
        table = Table(title="kiln demo: the loop, measured", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")

        def pct(value: float | None) -> str:
            return "-" if value is None or math.isnan(value) else f"{value:.3f}"

        table.add_row("v1 on MNIST traffic", pct(acc.mnist_traffic_v1))
        table.add_row("v1 on shifted traffic", pct(acc.shifted_before_retraining))
        table.add_row("drift detected", "yes" if figures.drift_detected else "no")
        table.add_row(
            f"v{figures.v2.version} on new shifted traffic", pct(acc.shifted_after_retraining)
        )
        heldout = figures.heldout
        untouched = (
            f"{heldout.samples} test digits, {heldout.in_training_data} of them in any "
            "version's training data"
        )
        table.add_row(
            f"v{figures.v1.version} / v{figures.v2.version} on the MNIST held-out set",
            f"{pct(acc.mnist_heldout_v1)} / {pct(acc.mnist_heldout_after_retraining)} "
            f"({untouched})",
        )
        table.add_row(
            "labelled requests left out of retraining",
            f"{heldout.excluded_labelled_requests} (their inputs are held-out test digits)",
        )
        table.add_row("failed requests", f"{figures.failed_requests} of {figures.requests}")
        table.add_row("duration", f"{figures.duration_s} s")
        table.add_row("report", str(figures.report))
        console.print(table)

    emit(figures.to_dict(), as_json, render)
