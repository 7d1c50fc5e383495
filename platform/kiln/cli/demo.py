"""`kiln demo`: the whole loop on bundled data, in KILN_HOME (default ./.kiln)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.output import JsonOption, emit, err_console
from kiln.settings import Settings


def demo(
    fast: Annotated[
        bool, typer.Option(help="Fewer epochs and requests, one training thread (for CI).")
    ] = False,
    task: Annotated[
        Literal["image", "text"],
        typer.Option(
            help="image: digits, MNIST to other writers. text: sentiment, movie snippets "
            "(Rotten Tomatoes) to product reviews (Amazon fine foods), strings served."
        ),
    ] = "image",
    as_json: bool = JsonOption,
) -> None:
    """Train, compile, serve, shift the traffic, detect it, retrain, promote, recover."""
    from kiln.loop.demo import DemoOptions, run_demo

    home = Settings().home
    if task == "text":
        _text_demo(fast, as_json)
        return
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


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _text_demo(fast: bool, as_json: bool) -> None:
    from kiln.loop.text_demo import TextDemoOptions, run_text_demo

    figures = run_text_demo(
        Settings().home,
        TextDemoOptions(fast=fast, show_progress=not as_json),
        say=lambda m: err_console.print(escape(m), highlight=False),
    )

    def render(console: Console) -> None:
        acc: dict[str, Any] = figures["accuracy"]
        v1, v2 = figures["v1"]["version"], figures["v2"]["version"]
        table = Table(title="kiln demo --task text: the loop, measured", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        table.add_row(f"v{v1} on movie snippets", _pct(acc["before_shift"]))
        table.add_row(f"v{v1} on product reviews", _pct(acc["after_shift"]))
        table.add_row("drift detected", "yes" if figures["drift_detected"] else "no")
        refused = figures.get("promotion_refused")
        table.add_row(
            f"v{v2 if not refused else v1} on new product reviews", _pct(acc["after_retraining"])
        )
        if refused:
            table.add_row(f"v{v2} promotion", f"refused by the gates: {refused}")
        held = figures["heldout"]
        table.add_row(
            f"v{v1} / v{v2} on the movie held-out set",
            f"{_pct(acc['heldout_v1'])} / {_pct(acc['heldout_v2'])} ({held['samples']} "
            f"snippets, {held['in_training_data']} of them in any version's training data)",
        )
        table.add_row("failed requests", f"{figures['failed_requests']} of {figures['requests']}")
        table.add_row("duration", f"{figures['duration_s']} s")
        table.add_row("report", str(figures["report"]))
        console.print(table)

    emit(figures, as_json, render)
