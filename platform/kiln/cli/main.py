"""The `kiln` application: global options, sub-command registration and error reporting.

Exit codes, one table (`kiln.cli.output.EXIT_CODES`, by `kiln.errors.ErrorCode`):

- 0: success.
- 2: the user's mistake or the system's state, never Kiln's: a usage error (an unknown
  command or option, a value of the wrong type or outside an option's choices: click's usage
  message), a bad setting
  (``KILN_*`` environment variable), or any `KilnError` except the internal ones; one
  paragraph that says what to do.
- 1: a bug in Kiln (any other exception, or a `KilnError` with code INTERNAL).
- 130: interrupted (Ctrl-C).

Tracebacks only with `--debug`, accepted anywhere before a ``--`` (``kiln --debug evaluate m``
and ``kiln evaluate m --debug`` alike), or KILN_DEBUG=1; the exit code stays the same.
Under `--json` an error is one JSON object on stdout,
``{"error": {"code": "not_found", "message": "...", "exit_code": 2}}``, with the same exit code.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, NoReturn

import click
import pydantic
import typer
from pydantic_settings import BaseSettings
from rich.markup import escape

from kiln import __version__
from kiln.cli import (
    bento,
    compile,
    datasets,
    demo,
    engines,
    evaluate,
    export,
    feedback,
    help_layout,
    loop,
    models,
    output,
    register,
    registry_promotion,
    rollout,
    serve,
    traffic,
    train,
)
from kiln.cli.output import EXIT_CODES, EXIT_INTERRUPTED, JsonOption, emit, err_console
from kiln.errors import ErrorCode, KilnError

_USAGE = EXIT_CODES[ErrorCode.INVALID_ARGUMENT]  # usage errors and bad settings: the user's

app = typer.Typer(
    name="kiln",
    help="Kiln: train, compile, register, serve and improve PyTorch models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=help_layout.MARKUP,
)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for errors.")
    ] = False,
) -> None:
    """Kiln: train, compile, register, serve and improve PyTorch models."""
    # --debug is taken out of argv by main(), wherever it is; declared here for --help.


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


# Commands in the order of the loop; each panel of `kiln --help` is one step of it.
app.command(name="demo", rich_help_panel=help_layout.START)(demo.demo)
app.command(name="version", rich_help_panel=help_layout.START)(version)
app.command(name="train", rich_help_panel=help_layout.DATA)(train.train)
app.command(name="register", rich_help_panel=help_layout.REGISTRY)(register.register)
app.command(name="promote", rich_help_panel=help_layout.REGISTRY)(registry_promotion.promote)
app.command(name="rollback", rich_help_panel=help_layout.REGISTRY)(registry_promotion.rollback)
app.command(name="rollout", rich_help_panel=help_layout.REGISTRY)(rollout.rollout)
# `kiln models gc`'s older name, kept working for the scripts that call it.
app.command(name="gc", hidden=True)(models.gc)
app.command(name="compile", rich_help_panel=help_layout.COMPILE)(compile.compile_command)
app.command(name="engines", rich_help_panel=help_layout.COMPILE)(engines.engines)
app.command(name="serve", rich_help_panel=help_layout.SERVING)(serve.serve)
app.command(name="evaluate", rich_help_panel=help_layout.TRAFFIC)(evaluate.evaluate)
app.command(name="retrain", rich_help_panel=help_layout.LOOP)(loop.retrain)
app.command(name="loop", rich_help_panel=help_layout.LOOP)(loop.loop)
app.add_typer(datasets.app, name="datasets", rich_help_panel=help_layout.DATA)
app.add_typer(models.app, name="models", rich_help_panel=help_layout.REGISTRY)
app.add_typer(bento.app, name="bento", rich_help_panel=help_layout.SERVING)
app.add_typer(export.app, name="export", rich_help_panel=help_layout.SERVING)
app.add_typer(traffic.app, name="traffic", rich_help_panel=help_layout.TRAFFIC)
app.add_typer(feedback.app, name="feedback", rich_help_panel=help_layout.TRAFFIC)
for _group in app.registered_groups:
    assert _group.typer_instance is not None
    _group.typer_instance.rich_markup_mode = help_layout.MARKUP
help_layout.install()


def _take_flag(args: list[str], flag: str) -> tuple[list[str], bool]:
    """`args` without `flag` (anywhere before a ``--``), and whether it was there."""
    end = args.index("--") if "--" in args else len(args)
    kept = [a for a in args[:end] if a != flag]
    return kept + args[end:], len(kept) != end


def _debug_setting() -> bool:
    from kiln.settings import Settings

    try:
        return Settings().debug
    except pydantic.ValidationError:
        return False  # reported as a bad setting by the command that reads the settings


# Typer 0.2x ships its own copy of click, whose exceptions are not click's; catch both.
_CLICK_ERRORS: tuple[type[Exception], ...] = tuple(
    {
        click.ClickException,
        *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
    }
)
_INTERRUPTS: tuple[type[BaseException], ...] = (
    *{click.exceptions.Abort, typer.Abort},
    KeyboardInterrupt,
)
_EXITS: tuple[type[BaseException], ...] = tuple({click.exceptions.Exit, typer.Exit})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the command and turns every failure into the exit
    code and message of the module docstring's table; never returns normally on failure."""
    args, debug = _take_flag(list(sys.argv[1:] if argv is None else argv), "--debug")
    as_json = "--json" in (args[: args.index("--")] if "--" in args else args)
    debug = debug or _debug_setting()
    output.reset()
    try:
        returned = app(args=args, prog_name="kiln", standalone_mode=False)
    except KilnError as exc:
        _fail(exc.code.value, exc.message, EXIT_CODES[exc.code], as_json=as_json, debug=debug)
    except _CLICK_ERRORS as exc:
        _usage_error(exc, as_json=as_json, debug=debug)
    except _EXITS as exc:
        _exit(int(getattr(exc, "exit_code", 0) or 0), as_json=as_json)
    except _INTERRUPTS:
        _exit(EXIT_INTERRUPTED, as_json=as_json)
    except pydantic.ValidationError as exc:
        message = _bad_setting(exc)
        if message is None:
            _bug(exc, as_json=as_json, debug=debug)
        _fail(ErrorCode.INVALID_ARGUMENT.value, message, _USAGE, as_json=as_json, debug=debug)
    except Exception as exc:
        _bug(exc, as_json=as_json, debug=debug)
    # Without standalone mode, click returns the code of an Exit raised inside a command
    # (typer turns Ctrl-C into Exit(130)) instead of raising it. Commands return None.
    if isinstance(returned, int) and not isinstance(returned, bool) and returned:
        _exit(returned, as_json=as_json)


def _fail(code: str, message: str, exit_code: int, *, as_json: bool, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    if not (as_json and output.emit_error(code, message, exit_code)):
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(exit_code)


def _usage_error(exc: Exception, *, as_json: bool, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    if as_json:
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        output.emit_error(ErrorCode.INVALID_ARGUMENT.value, text, _USAGE)
    else:
        exc.show()  # type: ignore[attr-defined]  # click's usage line, hint and message
    # click gives 1 to a few of its own (a file that cannot be opened); all are the user's.
    sys.exit(_USAGE)


def _exit(code: int, *, as_json: bool) -> NoReturn:
    if code == EXIT_INTERRUPTED:
        message = "interrupted"
        if not (as_json and output.emit_error("interrupted", message, code)):
            err_console.print(message)
    sys.exit(code)


def _bug(exc: BaseException, *, as_json: bool, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    what = f"{type(exc).__name__}: {exc}"
    hint = "This is a bug in Kiln. Run again with --debug for the traceback."
    code = EXIT_CODES[ErrorCode.INTERNAL]
    if not (as_json and output.emit_error(ErrorCode.INTERNAL.value, f"{what}. {hint}", code)):
        err_console.print(f"[bold red]internal error:[/] {escape(what)}\n{hint}", highlight=False)
    sys.exit(code)


def _bad_setting(exc: pydantic.ValidationError) -> str | None:
    """The message for settings read from the environment that do not validate; None when
    the failed model is not a settings class (then it is a bug)."""
    prefix = _env_prefixes().get(exc.title)
    if prefix is None:
        return None
    problems = "; ".join(
        f"{prefix}{'_'.join(str(p) for p in e['loc']).upper()}={str(e.get('input'))[:40]!r}: "
        f"{e['msg']}"
        for e in exc.errors(include_url=False)
    )
    return f"invalid setting: {problems}; fix or unset the environment variable"


def _env_prefixes() -> dict[str, str]:
    found: dict[str, str] = {}
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found[cls.__name__] = str(cls.model_config.get("env_prefix") or "")
    return found
