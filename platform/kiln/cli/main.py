"""The `kiln` application: global options, sub-command registration and error reporting.

User errors (`KilnError`) exit with code 2 and one paragraph that says what to do; anything
else is a bug and exits 1. Tracebacks only with `--debug` (or KILN_DEBUG=1).
"""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer
from rich.markup import escape

from kiln import __version__
from kiln.cli import (
    bento,
    compile,
    datasets,
    demo,
    engines,
    evaluate,
    feedback,
    loop,
    models,
    registry_promotion,
    rollout,
    serve,
    traffic,
    train,
)
from kiln.cli.output import JsonOption, emit, err_console
from kiln.errors import KilnError

app = typer.Typer(
    name="kiln",
    help="Kiln: train, compile, register, serve and improve PyTorch models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for errors.")
    ] = False,
) -> None:
    """Kiln: train, compile, register, serve and improve PyTorch models."""
    # --debug is read in main() from argv, before typer runs; declared here for --help.


@app.command()
def version(as_json: bool = JsonOption) -> None:
    """Print Kiln's version and the versions of the libraries it runs on."""
    import importlib.metadata as md
    import platform

    libs: dict[str, str | None] = {}
    for dist in ("torch", "onnxruntime", "onnx", "numpy", "polars", "grpcio", "bentoml"):
        try:
            libs[dist] = md.version(dist)
        except md.PackageNotFoundError:
            libs[dist] = None
    payload = {"kiln": __version__, "python": platform.python_version(), "libraries": libs}

    def render(console: object) -> None:
        from rich.console import Console

        assert isinstance(console, Console)
        console.print(f"kiln {__version__} (python {payload['python']})")
        for name, ver in libs.items():
            console.print(f"  {name:12} {ver or '-'}")

    emit(payload, as_json, render)


app.add_typer(datasets.app, name="datasets")
app.command(name="train")(train.train)
app.command(name="demo")(demo.demo)
app.add_typer(bento.app, name="bento")
app.add_typer(models.app, name="models")
app.command(name="promote")(registry_promotion.promote)
app.command(name="rollback")(registry_promotion.rollback)
app.command(name="rollout")(rollout.rollout)
app.command(name="gc")(models.gc)
app.command(name="compile")(compile.compile_command)
app.command(name="engines")(engines.engines)
app.command(name="serve")(serve.serve)
app.add_typer(traffic.app, name="traffic")
app.add_typer(feedback.app, name="feedback")
app.command(name="evaluate")(evaluate.evaluate)
app.command(name="retrain")(loop.retrain)
app.command(name="loop")(loop.loop)


def _debug_requested(argv: list[str]) -> bool:
    from kiln.settings import Settings

    return "--debug" in argv or Settings().debug


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    try:
        app(args=args, prog_name="kiln", standalone_mode=False)
    except KilnError as exc:
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
            "This is a bug in Kiln. Run again with --debug for the traceback.",
            highlight=False,
        )
        sys.exit(1)
