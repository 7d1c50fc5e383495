"""`kiln retrain` and `kiln loop`: production traffic drives new versions."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli import distributed
from kiln.cli.models import model_name
from kiln.cli.output import JsonOption, emit, err_console
from kiln.errors import InvalidArgument
from kiln.settings import Settings

Approval = Literal["auto", "manual"]
"""`kiln.loop.watch.LoopPolicy.approve`'s values, spelled out so that the CLI starts without
importing the loop (a test keeps the two equal)."""


@distributed.rank_errors()
def retrain(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(metavar="NAME", help="The model to retrain (its production version)."),
    ],
    since: Annotated[
        str, typer.Option(help="Traffic window: 30m, 24h, 7d, or an ISO time.")
    ] = "24h",
    until: Annotated[
        str | None,
        typer.Option(
            help="End of the traffic window, an ISO time (UTC unless given); on several "
            "nodes give every node the same --since and --until.",
            show_default="now",
        ),
    ] = None,
    min_labels: Annotated[int, typer.Option(help="Labelled requests needed to retrain.")] = 100,
    epochs: Annotated[int | None, typer.Option(help="Epochs.", show_default="the parent's")] = None,
    warm_start: Annotated[bool, typer.Option(help="Start from the parent's weights.")] = False,
    alias: Annotated[str, typer.Option(help="Alias to point at the new version.")] = "candidate",
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    nproc: distributed.Nproc = 1,
    nnodes: distributed.Nnodes = 1,
    node_rank: distributed.NodeRank = 0,
    rdzv_endpoint: distributed.RdzvEndpoint = None,
    rdzv_timeout: distributed.RdzvTimeout = 300,
    as_json: bool = JsonOption,
) -> None:
    """Train a new version on the parent's data plus labelled traffic; point ALIAS at it."""
    import kiln.registry
    from kiln.loop.retrain import RetrainOptions, plan, retrain_as_rank

    name = model_name(name, "kiln retrain")
    options = RetrainOptions(
        since=since,
        until=window_end(until),
        min_labels=min_labels,
        epochs=epochs,
        warm_start=warm_start,
        alias=alias,
        show_progress=progress and not as_json,
        run_id=os.environ.get(distributed.RUN_ID_ENV),
    )
    say = (lambda m: err_console.print(f"· {m}")) if progress and distributed.rank() == 0 else None
    layout = distributed.layout_of(ctx)
    with kiln.registry.open(settings=Settings()) as registry:
        if layout.distributed:
            from kiln.train.launcher import launch
            from kiln.train.trainer import new_run_id

            # Everything cheap is checked here, before any rank starts; every rank then reads
            # the window this agent fixed, so all train on the same rows.
            planned = plan(registry, name, Settings(), options, say or (lambda _: None))
            layout.validate(planned.config.batch_size)
            fixed = ["--since", planned.window.since.isoformat()]
            fixed += ["--until", planned.window.until.isoformat()]
            launch(
                layout,
                [*distributed.rank_args(ctx, leave_out=("since", "until")), *fixed],
                run_id=new_run_id(planned.config),
                runs_dir=Settings().runs_dir,
                module="kiln.loop",
            )
            return  # rank 0 printed the result and registered the version
        with distributed.lost_ranks():
            result = retrain_as_rank(
                registry, name, Settings(), options, progress=say or (lambda _: None)
            )
    if result is None:
        return  # under torchrun, rank 0 alone reports and registers
    payload = result.to_dict()

    def render(console: Console) -> None:
        table = Table(
            title=f"retrained {result.version.ref} from {result.parent.ref}", show_header=False
        )
        table.add_column("", style="bold")
        table.add_column("")
        used = (
            f"{result.labels} ({result.trained_on} trained on, {result.held_out} held out "
            f"for the gates, {result.excluded_heldout} excluded: inputs equal to samples of "
            f"{result.parent.ref}'s held-out test split; repeated x{result.repeat})"
        )
        table.add_row("labelled requests", escape(used))
        if result.skipped:
            skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items()))
            table.add_row("skipped (unusable)", escape(skipped))
        if "test_rmse" in result.metrics:  # a regressor
            table.add_row("test RMSE", f"{result.metrics['test_rmse']:.4f}")
        else:
            table.add_row("test accuracy", f"{result.metrics['test_accuracy']:.4f}")
        table.add_row("engines", ", ".join(result.engines))
        table.add_row(alias, result.version.ref)
        console.print(table)
        console.print(
            f"next: kiln promote {result.version.ref}  (the gates compare it with production)"
        )

    emit(payload, as_json, render)


def window_end(until: str | None) -> datetime | None:
    """`--until`: an ISO time, UTC unless it says otherwise."""
    if until is None:
        return None
    try:
        when = datetime.fromisoformat(until)
    except ValueError:
        raise InvalidArgument(
            f"--until '{until}' is not an ISO time; use e.g. 2026-11-24T08:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def loop(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model to watch.")],
    since: Annotated[str, typer.Option(help="Traffic window per round: 30m, 24h, 7d.")] = "24h",
    min_labels: Annotated[int, typer.Option(help="New labels needed to retrain.")] = 100,
    min_accuracy: Annotated[
        float, typer.Option(help="Retrain when production's labelled accuracy is below this.")
    ] = 0.9,
    max_rmse_increase: Annotated[
        float,
        typer.Option(
            help="Retrain a regressor when its labelled-traffic RMSE exceeds the one recorded "
            "at training by more than this fraction."
        ),
    ] = 0.1,
    on_drift: Annotated[bool, typer.Option(help="Retrain when drift is flagged.")] = True,
    approve: Annotated[
        Approval,
        typer.Option(help="auto: promote when the gates pass; manual: leave a candidate."),
    ] = "auto",
    interval: Annotated[float, typer.Option(help="Seconds between rounds.")] = 60.0,
    once: Annotated[bool, typer.Option(help="Run one round and exit.")] = False,
    as_json: bool = JsonOption,
) -> None:
    """Watch NAME's traffic; retrain and promote (or propose) when it stops being good."""
    import signal
    import threading

    import kiln.registry
    from kiln.loop.watch import LoopPolicy, Round, run_loop

    name = model_name(name, "kiln loop")
    policy = LoopPolicy(
        since=since,
        min_labels=min_labels,
        min_accuracy=min_accuracy,
        max_rmse_increase=max_rmse_increase,
        on_drift=on_drift,
        approve=approve,
        interval_s=interval,
    )
    stop = threading.Event()
    if not once:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def show(current: Round) -> None:
        if not as_json:
            figure = (
                f"RMSE {current.rmse:.4g}"
                if current.rmse is not None
                else f"accuracy {'-' if current.accuracy is None else f'{current.accuracy:.3f}'}"
            )
            err_console.print(
                f"production v{current.production}: {figure}, drift "
                f"{'yes' if current.drift else 'no'}, {current.labelled} labelled -> "
                f"[bold]{current.action}[/] {escape(current.message)}"
            )

    with kiln.registry.open(settings=Settings()) as registry:
        try:
            rounds = run_loop(
                registry, name, Settings(), policy, once=once, stop=stop,
                say=lambda m: err_console.print(f"· {escape(m)}"), report=show,
            )  # fmt: skip
        except KeyboardInterrupt:
            rounds = []
    emit({"rounds": [r.to_dict() for r in rounds]}, as_json, lambda _console: None)
