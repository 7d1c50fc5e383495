"""`kiln feedback import FILE`: store ground-truth labels from a CSV or Parquet file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kiln.cli.output import JsonOption, emit
from kiln.settings import Settings

app = typer.Typer(help="Ground-truth labels for served requests.", no_args_is_help=True)


@app.command("import")
def import_command(
    file: Annotated[
        Path, typer.Argument(help="CSV or Parquet with request_id and label (class index).")
    ],
    model: Annotated[
        str | None,
        typer.Option(help="The model the labels are for (where the file has no model column)."),
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Import labels keyed by request id; ids not in the traffic log are kept and reported."""
    from kiln.traffic import import_feedback

    result = import_feedback(Settings().home, file, model=model)

    def render(console: Console) -> None:
        console.print(
            f"imported {result.rows} label(s) from {file}: {result.matched} matched logged "
            f"requests, {result.unmatched} unmatched (kept; they match once the request is "
            "logged)"
            + (
                f"; {result.duplicates} duplicate id(s), the last label wins"
                if result.duplicates
                else ""
            )
        )
        if result.unmatched_examples:
            console.print("unmatched, e.g.: " + ", ".join(result.unmatched_examples))

    emit(asdict(result), as_json, render)
