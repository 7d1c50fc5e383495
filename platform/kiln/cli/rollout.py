"""`kiln rollout`: start, change, end or show a model's canary or shadow rollout.

The state lives in the registry (`Registry.set_rollout`); running servers poll it and route
by it, so this command only writes the state and says what it now is.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kiln.cli.models import model_name, open_registry
from kiln.cli.output import JsonOption, emit
from kiln.cli.version_tables import when
from kiln.errors import InvalidArgument
from kiln.registry import DEFAULT_ROLLOUT_ALIAS, Rollout, RolloutChange, RolloutMode


def rollout(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model.")],
    canary: Annotated[
        float | None,
        typer.Option(
            "--canary",
            help="Send this percentage (0 < P <= 100) of requests to the second version.",
        ),
    ] = None,
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow",
            help="Copy requests to the second version; log its answers, return production's.",
        ),
    ] = False,
    off: Annotated[bool, typer.Option("--off", help="End the rollout.")] = False,
    percent: Annotated[
        float | None,
        typer.Option(help="With --shadow: the percentage of requests copied.", show_default="100"),
    ] = None,
    alias: Annotated[
        str, typer.Option(help="The alias naming the second version.")
    ] = DEFAULT_ROLLOUT_ALIAS,
    reason: Annotated[str, typer.Option(help="Why; stored in the rollout history.")] = "",
    actor: Annotated[
        str | None, typer.Option(help="Who is changing it.", show_default="the OS user")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Canary or shadow a second version (default: NAME@candidate) beside production.

    Without --canary, --shadow or --off, shows the rollout and its history.
    """
    name = model_name(name, "kiln rollout")
    mode = _mode(canary, shadow, off, percent)
    with open_registry() as registry:
        before = registry.rollout(name)
        if mode is None:
            changes = registry.rollout_history(name)
            production = registry.aliases(name).get("production")
            _show(before, changes, production, as_json)
            return
        share = canary if mode is RolloutMode.CANARY else percent
        after = registry.set_rollout(
            name, mode, percent=share, alias=alias, actor=actor, reason=reason
        )
        production = registry.aliases(name).get("production")
    changed = after.updated_at != before.updated_at
    payload = {
        "name": name,
        "rollout": after.to_dict(),
        "previous": before.to_dict(),
        "production_version": production,
        "changed": changed,
    }

    def render(console: Console) -> None:
        if not changed:
            console.print(f"{name}: no rollout was running; nothing to do")
            return
        console.print(f"{name}: [bold]{after.describe()}[/]")
        if production is not None:
            console.print(f"production: {name}:{production}")
        if before.active:
            console.print(f"was: {before.describe()}")
        console.print("running servers follow on their next registry poll")

    emit(payload, as_json, render)


def _mode(
    canary: float | None, shadow: bool, off: bool, percent: float | None
) -> RolloutMode | None:
    chosen = [flag for flag, on in (("--canary", canary is not None), ("--shadow", shadow),
                                    ("--off", off)) if on]  # fmt: skip
    if len(chosen) > 1:
        raise InvalidArgument(
            f"{' and '.join(chosen)} exclude each other; give one of --canary PERCENT, "
            "--shadow or --off"
        )
    if percent is not None and not shadow:
        raise InvalidArgument(
            "--percent goes with --shadow (the share of requests copied); a canary takes its "
            "share directly: --canary PERCENT"
        )
    if canary is not None:
        return RolloutMode.CANARY
    if shadow:
        return RolloutMode.SHADOW
    return RolloutMode.OFF if off else None


def _show(
    state: Rollout, changes: list[RolloutChange], production: int | None, as_json: bool
) -> None:
    payload = {
        "name": state.name,
        "rollout": state.to_dict(),
        "production_version": production,
        "history": [c.to_dict() for c in changes],
    }

    def render(console: Console) -> None:
        console.print(f"{state.name}: [bold]{state.describe()}[/]")
        if production is not None:
            console.print(f"production: {state.name}:{production}")
        if not changes:
            console.print(
                f"no rollouts yet: kiln rollout {state.name} --canary 10 (or --shadow) once "
                f"{state.name}@candidate names a second version"
            )
            return
        table = Table(title=f"{state.name} rollout history")
        for column in ("time (UTC)", "mode", "share"):
            table.add_column(column, no_wrap=True)
        for column in ("second", "prod.", "actor", "reason"):
            table.add_column(column, overflow="fold")
        for c in changes:
            table.add_row(
                when(c.at)[:16],
                c.mode.value,
                "-" if c.mode is RolloutMode.OFF else f"{c.percent:g}%",
                f"{c.alias}={'-' if c.candidate_version is None else c.candidate_version}",
                "-" if c.production_version is None else str(c.production_version),
                c.actor,
                c.reason or "-",
            )
        console.print(table)

    emit(payload, as_json, render)
