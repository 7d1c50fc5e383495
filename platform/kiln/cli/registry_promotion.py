"""`kiln promote` and `kiln rollback`: move aliases, with gates and a recorded history."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kiln.cli.models import moves_table, open_registry
from kiln.cli.output import JsonOption, emit
from kiln.registry import DEFAULT_ACCURACY_TOLERANCE, AliasMove, default_gates


def promote(
    ref: Annotated[
        str, typer.Argument(metavar="NAME:VERSION", help="The version to promote (or NAME@ALIAS).")
    ],
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "production",
    reason: Annotated[str, typer.Option(help="Why; stored in the alias history.")] = "",
    force: Annotated[
        bool, typer.Option("--force", help="Move even if a gate fails (recorded as forced).")
    ] = False,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="How far the candidate's test_accuracy may fall below the current version's.",
        ),
    ] = DEFAULT_ACCURACY_TOLERANCE,
    actor: Annotated[
        str | None, typer.Option(help="Who is promoting; defaults to the OS user.")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Point an alias (default: production) at a version, after the promotion gates pass."""
    with open_registry() as registry:
        move = registry.promote(
            ref,
            alias,
            actor=actor,
            reason=reason,
            force=force,
            gates=default_gates(accuracy_tolerance=tolerance),
        )
    _report(move, as_json)


def rollback(
    name: Annotated[str, typer.Argument(help="The model.")],
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
    reason: Annotated[str, typer.Option(help="Why; stored in the alias history.")] = "",
    actor: Annotated[
        str | None, typer.Option(help="Who is rolling back; defaults to the OS user.")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Move an alias back to the version it pointed at before its latest promotion."""
    with open_registry() as registry:
        move = registry.rollback(name, alias, actor=actor, reason=reason)
    _report(move, as_json)


def _report(move: AliasMove, as_json: bool) -> None:
    def render(console: Console) -> None:
        if move.gate is not None and move.gate.results:
            gates = Table(title="gates")
            for column in ("gate", "result", "numbers", "detail"):
                gates.add_column(column, overflow="fold")
            for r in move.gate.results:
                verdict = "[green]pass[/]" if r.passed else "[bold red]FAIL[/]"
                numbers = ", ".join(
                    f"{k}={'-' if v is None else f'{v:.4g}'}" for k, v in r.numbers.items()
                )
                gates.add_row(r.gate, verdict, numbers, r.message)
            console.print(gates)
        console.print(moves_table("moved", [move]))
        origin = "nowhere" if move.from_version is None else f"{move.name}:{move.from_version}"
        forced = " [bold yellow](forced past a failed gate)[/]" if move.forced else ""
        console.print(
            f"{move.name}@{move.alias}: {origin} → [bold]{move.name}:{move.to_version}[/]{forced}"
        )

    emit(move.to_dict(), as_json, render)
