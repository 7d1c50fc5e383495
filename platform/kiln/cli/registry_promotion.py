"""`kiln promote` and `kiln rollback`: move aliases, with gates and a recorded history.

`kiln promote` runs the recorded-accuracy gate (recorded test RMSE for a regression model) and,
unless `--no-eval-gates`, the evaluation gates (`kiln.evaluate.gates`: parity, held-out
regression, traffic gain, latency; RMSE-based for a regression model). The gate
table is printed whether the move happens or is refused; the registry stores the decision
(forced or not) with the move.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kiln.cli.models import model_name, moves_table, open_registry
from kiln.cli.output import EXIT_CODES, JsonOption, emit, err_console, error_object
from kiln.errors import GateFailed
from kiln.registry import (
    DEFAULT_ACCURACY_TOLERANCE,
    AliasMove,
    Gate,
    GateContext,
    GateResult,
    default_gates,
    task_of,
    validate_name,
)
from kiln.settings import Settings

# `kiln.evaluate.gates.GateThresholds` defaults, spelled out so that starting the CLI does
# not import the evaluation stack (a test keeps the two equal).
DEFAULT_MIN_TRAFFIC_GAIN = 0.0
DEFAULT_MAX_REGRESSION = 0.01
DEFAULT_MAX_HELDOUT_RMSE_INCREASE = 0.02
DEFAULT_LATENCY_BUDGET = 1.5
DEFAULT_TRAFFIC_WINDOW = "24h"


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
            help="How far the candidate's recorded test_accuracy may fall below the current "
            "version's.",
        ),
    ] = DEFAULT_ACCURACY_TOLERANCE,
    min_traffic_gain: Annotated[
        float,
        typer.Option(
            help="Accuracy gain over the current version required on held-out labelled "
            "traffic (0: not worse).",
        ),
    ] = DEFAULT_MIN_TRAFFIC_GAIN,
    max_regression: Annotated[
        float,
        typer.Option(
            help="Largest accuracy drop allowed on the held-out test split of the current "
            "version's data set.",
        ),
    ] = DEFAULT_MAX_REGRESSION,
    max_heldout_rmse_increase: Annotated[
        float,
        typer.Option(
            help="Regression models: how much higher than the current version's the "
            "candidate's RMSE may be on the held-out test split (and as recorded at "
            "training), as a fraction (0.02: 2%). --min-traffic-gain is then the fraction by "
            "which its RMSE on held-out traffic must fall.",
        ),
    ] = DEFAULT_MAX_HELDOUT_RMSE_INCREASE,
    latency_budget: Annotated[
        float,
        typer.Option(help="Candidate batch-1 latency at most this times the current one's."),
    ] = DEFAULT_LATENCY_BUDGET,
    since: Annotated[
        str, typer.Option(help="Labelled traffic window: 30m, 24h, 7d, or an ISO time.")
    ] = DEFAULT_TRAFFIC_WINDOW,
    eval_gates: Annotated[
        bool,
        typer.Option(
            "--eval-gates/--no-eval-gates",
            help="Run the evaluation gates (parity, held-out, traffic, latency); without "
            "them only the recorded-accuracy gate runs.",
        ),
    ] = True,
    actor: Annotated[
        str | None, typer.Option(help="Who is promoting.", show_default="the OS user")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Point an alias (default: production) at a version, after the promotion gates pass."""
    from kiln.evaluate.gates import GateThresholds, evaluation_gates

    thresholds = GateThresholds(
        min_traffic_gain=min_traffic_gain,
        max_heldout_regression=max_regression,
        max_heldout_rmse_increase=max_heldout_rmse_increase,
        latency_budget=latency_budget,
        traffic_window=since,
    )
    with open_registry() as registry:
        # A bad alias or reference fails here, before the gates announce themselves.
        validate_name(alias, "alias name")
        candidate = registry.resolve(ref)
        # A regressor records test_rmse, not test_accuracy: it is judged by that instead.
        gates: list[Gate] = default_gates(
            accuracy_tolerance=tolerance,
            rmse_tolerance=max_heldout_rmse_increase,
            task=task_of(candidate),
        )
        if eval_gates:
            gates += evaluation_gates(registry, Settings(), thresholds)
            err_console.print(
                f"· running the evaluation gates on {ref} (held-out data, labelled traffic "
                f"of the last {since})"
            )
        recorded = _Recorded(gates)
        try:
            move = registry.promote(
                ref, alias, actor=actor, reason=reason, force=force, gates=recorded.gates
            )
        except GateFailed as exc:
            # The error (stderr, exit 2) names the failed gates; the table shows every number.
            # Under --json this is the one object on stdout, so it carries the error too.
            results = recorded.results()
            refused = {
                "ref": ref,
                "alias": alias,
                "promoted": False,
                "gates": [r.to_dict() for r in results],
                "error": error_object(exc.code.value, exc.message, EXIT_CODES[exc.code]),
            }
            emit(refused, as_json, lambda console: console.print(gates_table(results)))
            raise
        rollout = registry.rollout(move.name)
    _report(move, as_json)
    if rollout.active and rollout.version == move.to_version and alias == "production":
        # Harmless (servers route everything to production when both are one version), but
        # the rollout no longer compares anything.
        err_console.print(
            f"note: the {rollout.mode.value} of {move.name}@{rollout.alias} now runs "
            f"{move.name}:{move.to_version} beside itself; end it with kiln rollout "
            f"{move.name} --off"
        )


class _Recorded:
    """Wraps gates to keep each one's latest result: a refused promotion raises `GateFailed`
    without a decision, and the table should still show every gate's numbers."""

    def __init__(self, gates: list[Gate]) -> None:
        self._latest: dict[str, GateResult] = {}
        self.gates: list[Gate] = [_RecordingGate(g, self._latest) for g in gates]

    def results(self) -> list[GateResult]:
        return list(self._latest.values())


class _RecordingGate:
    def __init__(self, gate: Gate, latest: dict[str, GateResult]) -> None:
        self._gate = gate
        self._latest = latest

    @property
    def name(self) -> str:
        return self._gate.name

    def __call__(self, context: GateContext) -> GateResult:
        result = self._gate(context)
        self._latest[result.gate] = result
        return result


def rollback(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model.")],
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
    reason: Annotated[str, typer.Option(help="Why; stored in the alias history.")] = "",
    actor: Annotated[
        str | None, typer.Option(help="Who is rolling back.", show_default="the OS user")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Move an alias back to the version it pointed at before its latest promotion."""
    name = model_name(name, "kiln rollback")
    with open_registry() as registry:
        move = registry.rollback(name, alias, actor=actor, reason=reason)
    _report(move, as_json)


def _report(move: AliasMove, as_json: bool) -> None:
    def render(console: Console) -> None:
        if move.gate is not None and move.gate.results:
            console.print(gates_table(list(move.gate.results), forced=move.forced))
        console.print(moves_table("moved", [move]))
        origin = "nowhere" if move.from_version is None else f"{move.name}:{move.from_version}"
        forced = " [bold yellow](forced past a failed gate)[/]" if move.forced else ""
        console.print(
            f"{move.name}@{move.alias}: {origin} → [bold]{move.name}:{move.to_version}[/]{forced}"
        )

    emit(move.to_dict(), as_json, render)


def gates_table(results: list[GateResult], *, forced: bool = False) -> Table:
    """Every gate's verdict, numbers and message."""
    table = Table(title="gates")
    for column in ("gate", "result", "numbers", "detail"):
        table.add_column(column, overflow="fold")
    for r in results:
        if r.passed:
            verdict = "[green]pass[/]"
        else:
            verdict = "[bold yellow]FAIL, forced[/]" if forced else "[bold red]FAIL[/]"
        numbers = ", ".join(f"{k}={'-' if v is None else f'{v:.4g}'}" for k, v in r.numbers.items())
        table.add_row(r.gate, verdict, numbers, r.message)
    return table
