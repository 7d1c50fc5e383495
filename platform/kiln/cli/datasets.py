"""`kiln datasets list|show`: the named data sets and what is inside one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.output import JsonOption, emit
from kiln.errors import KilnError
from kiln.settings import Settings

app = typer.Typer(help="Inspect the data sets Kiln can train on.", no_args_is_help=True)


@app.command("list")
def list_datasets(as_json: bool = JsonOption) -> None:
    """List the named data sets and whether each is available on this machine."""
    from kiln.data import CATALOG, load_raw

    settings = Settings()
    rows = []
    for info in CATALOG.values():
        try:
            raw = load_raw(info.name, settings)
            status, samples = (
                "available",
                int(raw.y.shape[0]) + (0 if raw.test_y is None else int(raw.test_y.shape[0])),
            )
        except KilnError as exc:
            status, samples = f"unavailable: {exc.message}", None
        rows.append(
            {
                "name": info.name,
                "task": info.task,
                "modality": info.modality,
                "description": info.description,
                "samples": samples,
                "status": status,
            }
        )

    def render(console: Console) -> None:
        table = Table(title="data sets (or pass a .parquet or .csv file or an image folder)")
        for col in ("name", "task", "modality", "samples", "description", "status"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(
                str(r["name"]),
                str(r["task"]),
                str(r["modality"]),
                str(r["samples"] or "-"),
                # escaped: "kiln[text]" in a description or hint is not rich markup
                escape(str(r["description"])),
                escape(str(r["status"])),
            )
        console.print(table)

    emit({"datasets": rows}, as_json, render)


@app.command("show")
def show(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="A data set name, a .parquet or .csv file or an image folder."
        ),
    ],
    seed: Annotated[int, typer.Option(min=0, help="Split seed (0 or more).")] = 0,
    as_json: bool = JsonOption,
) -> None:
    """Show a data set's shape, classes (or, for regression, its target's range, mean and
    std), split sizes, value range (words per text for a text set) and fingerprint."""
    from kiln.data import load_dataset

    dataset = load_dataset(name, Settings(), seed=seed)
    summary = {**dataset.summary(), "modality": dataset.modality}

    def render(console: Console) -> None:
        table = Table(title=f"data set {escape(name)}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        sizes = summary["sizes"]
        assert isinstance(sizes, dict)
        table.add_row("source", escape(str(summary["source"])))
        table.add_row("input shape", str(summary["input_shape"]))
        table.add_row("task", str(summary["task"]))
        table.add_row("modality", str(summary["modality"]))
        if summary["task"] == "regression":
            target = summary["target"]
            assert isinstance(target, dict)
            for split, stats in target.items():
                table.add_row(
                    f"target ({split})",
                    f"{stats['min']:g} to {stats['max']:g}, "
                    f"mean {stats['mean']:.4g}, std {stats['std']:.4g}",
                )
        else:
            table.add_row("classes", escape(", ".join(summary["classes"])))  # type: ignore[arg-type]
        table.add_row("train / val / test", f"{sizes['train']} / {sizes['val']} / {sizes['test']}")
        if "words_per_text" in summary:
            words = summary["words_per_text"]
            assert isinstance(words, dict)
            table.add_row(
                "words per text (train)",
                f"mean {words['mean']}, median {words['median']}, max {words['max']}",
            )
        else:
            table.add_row("value range", str(summary["value_range"]))
        table.add_row("split", str(summary["split"]))
        table.add_row("fingerprint", str(summary["fingerprint"]))
        console.print(table)

    emit(summary, as_json, render)
