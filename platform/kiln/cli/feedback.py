"""`kiln feedback import FILE`: store ground-truth labels or values from a CSV or Parquet
file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kiln.cli.output import JsonOption, emit
from kiln.settings import Settings

app = typer.Typer(
    help="Ground truth for served requests: labels (classifiers) or values (regressors).",
    no_args_is_help=True,
)


@app.command("import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="CSV or Parquet with request_id and label (class index), or request_id and "
            "value (the true number, for a regression model).",
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(help="The model the feedback is for (where the file has no model column)."),
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="Import the valid rows and report the invalid ones, instead of refusing the "
            "whole file.",
        ),
    ] = False,
    as_json: bool = JsonOption,
) -> None:
    """Import labels or values keyed by request id; ids not in the traffic log are kept and
    reported.

    Each label must be a class index of its model (the file's model column, else --model),
    as the registry knows its classes; each value a finite number, for a regression model. A
    file with invalid rows is refused as a whole (exit 2, nothing imported) unless
    --skip-invalid is given.
    """
    import kiln.registry
    from kiln.evaluate.references import model_classes, model_task
    from kiln.traffic import import_feedback, log_store

    settings = Settings()
    with kiln.registry.open(settings=settings) as registry:
        known: dict[str, int | None] = {}
        kinds: dict[str, str | None] = {}

        def classes(name: str) -> int | None:
            if name not in known:
                known[name] = model_classes(registry, name)
            return known[name]

        def task(name: str) -> str | None:
            if name not in kinds:
                kinds[name] = model_task(registry, name)
            return kinds[name]

        result = import_feedback(
            log_store(settings),
            file,
            model=model,
            classes=classes,
            skip_invalid=skip_invalid,
            tasks=task,
        )

    def render(console: Console) -> None:
        console.print(
            f"imported {result.rows} {_kind(result.rows, result.values)} from "
            f"{escape(str(file))}: {result.matched} matched logged requests, "
            f"{result.unmatched} unmatched (kept; they match once the request is logged)"
            + (
                f"; {result.duplicates} duplicate id(s), the last label wins"
                if result.duplicates
                else ""
            ),
            highlight=False,
        )
        if result.unmatched_examples:
            console.print("unmatched, e.g.: " + escape(", ".join(result.unmatched_examples)))
        if result.refused:
            console.print(f"refused {result.refused} invalid row(s) (--skip-invalid), e.g.:")
            for e in result.refused_examples:
                where = f"line {e['line']}" if "line" in e else f"row {e['row']}"
                console.print(f"  {where}: {escape(e['reason'])}", highlight=False)
        if result.unchecked_models:
            console.print(
                "not registered here, labels checked only to be class indices: "
                + escape(", ".join(result.unchecked_models))
            )

    emit(asdict(result), as_json, render)


def _kind(rows: int, values: int) -> str:
    """What the rows were, for the summary line: "label(s)" as before numeric feedback."""
    return "value(s)" if rows and values == rows else "label(s)"
