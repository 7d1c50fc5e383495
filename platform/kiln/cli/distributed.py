"""The distributed-training options `kiln train` and `kiln retrain` share, and how either
command behaves as the launcher's agent or as one of its ranks.

With `--nproc N` (or `--nnodes`), the command is the agent: it checks what it can cheaply, then
`kiln.train.launcher.launch` starts N ranks, each running the same command with the same
options less these (`rank_args`). A rank is the command run with WORLD_SIZE > 1 in its
environment: rank 0 alone reports and registers.

Under `--json` stdout holds one object. A rank that fails reports on stderr (`rank_errors`)
when the run was started by Kiln's agent, whose own error then is that object; under a plain
`torchrun` rank 0 reports as any command does, and the other ranks always on stderr.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from kiln.cli.output import EXIT_CODES, err_console
from kiln.errors import ErrorCode, KilnError, Unavailable

if TYPE_CHECKING:  # imports torch: only a command that trains may pay for it
    from kiln.train.launcher import Layout

PANEL = "Distributed training"
RUN_ID_ENV = "KILN_TRAIN_RUN_ID"
"""`kiln.train.launcher.RUN_ID_ENV`, spelled out so that the CLI starts without torch; its
presence says a rank was started by Kiln's agent (a test keeps the two equal)."""

Nproc = Annotated[
    int,
    typer.Option(
        help="Training processes on this node (DDP over gloo; each takes its share of every "
        "batch); 1 = one process, no torch.distributed.",
        rich_help_panel=PANEL,
    ),
]
Nnodes = Annotated[
    int,
    typer.Option(
        help="Nodes (hosts) in the run; start the same command on each with the same options.",
        rich_help_panel=PANEL,
    ),
]
NodeRank = Annotated[
    int,
    typer.Option(
        help="This node's rank, 0..nnodes-1; node 0 hosts the rendezvous.",
        rich_help_panel=PANEL,
    ),
]
RdzvEndpoint = Annotated[
    str | None,
    typer.Option(
        help="HOST:PORT of the c10d rendezvous, the same on every node (node 0's address) "
        "[default: 127.0.0.1 and a free port, for one node].",
        rich_help_panel=PANEL,
    ),
]
RdzvTimeout = Annotated[
    int,
    typer.Option(
        help="Seconds to wait for every node to join the rendezvous, and for this node to "
        "reach it.",
        rich_help_panel=PANEL,
    ),
]
LAUNCH_OPTIONS = ("nproc", "nnodes", "node_rank", "rdzv_endpoint", "rdzv_timeout")
"""The parameter names of the options above: the agent's own, never passed to a rank."""


def layout_of(ctx: typer.Context) -> Layout:
    """The layout the command's distributed options describe."""
    from kiln.train.launcher import Layout

    p = ctx.params
    return Layout(p["nproc"], p["nnodes"], p["node_rank"], p["rdzv_endpoint"], p["rdzv_timeout"])


def rank_args(ctx: typer.Context, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The arguments and options this command was given, less the launcher's own and
    `leave_out` (parameter names): what every rank runs it with."""
    arguments: list[str] = []
    options: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in (*LAUNCH_OPTIONS, *leave_out) or value is None:
            continue
        if param.param_type_name == "argument":
            arguments += [str(v) for v in (value if param.multiple else [value])]
        elif getattr(param, "is_flag", False):
            negative = param.secondary_opts
            if value or negative:
                options.append(param.opts[0] if value else negative[0])
        elif param.param_type_name == "option":
            for item in value if param.multiple else [value]:
                options += [param.opts[0], str(getattr(item, "value", item))]
    return arguments + options


def rank() -> int:
    """This process's rank: 0 outside torch.distributed."""
    return int(os.environ.get("RANK", "0"))


def in_world() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


@contextmanager
def lost_ranks() -> Iterator[None]:
    """Around the training itself: a collective that failed (another rank died or hung) is
    Unavailable naming this rank; the agent names the one that failed."""
    try:
        yield
    except RuntimeError as exc:
        if not in_world():
            raise
        raise Unavailable(f"rank {rank()} lost the other ranks of the run: {exc}") from exc


@contextmanager
def rank_errors() -> Iterator[None]:
    """Around a command's body: a rank's failure goes to stderr, not stdout, where another
    process reports the run's one error (Kiln's agent, or rank 0 under plain torchrun); the
    exit code stays the error's (1 for a bug, as the entry point gives it)."""
    try:
        yield
    except Exception as exc:
        # click's own exits and usage errors carry an exit_code: the entry point handles them.
        if hasattr(exc, "exit_code") or not in_world() or not reports_elsewhere():
            raise
        if isinstance(exc, KilnError):
            what, code = f"error:[/] rank {rank()}: {escape(exc.message)}", exc.code
        else:
            what = f"internal error:[/] rank {rank()}: {escape(f'{type(exc).__name__}: {exc}')}"
            code = ErrorCode.INTERNAL
        err_console.print(f"[bold red]{what}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CODES[code]) from exc


def reports_elsewhere() -> bool:
    """Whether another process reports this rank's run: Kiln's agent does for every rank,
    rank 0 does under a plain torchrun."""
    return RUN_ID_ENV in os.environ or rank() != 0
