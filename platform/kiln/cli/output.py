"""How commands report: rich tables for people, one JSON object on stdout for scripts.

Every reporting command takes `--json`. In JSON mode nothing but the one object reaches
stdout (progress and notes go to stderr), so `kiln ... --json | jq` always works. A command
that fails prints its error as that object instead (`emit_error`, called by the entry point):
``{"error": {"code": "not_found", "message": "...", "exit_code": 2}}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from kiln.errors import ErrorCode

EXIT_CODES: dict[ErrorCode, int] = {code: 2 for code in ErrorCode} | {ErrorCode.INTERNAL: 1}
"""The exit code of a failed command, by the code of its error (`kiln.errors.ErrorCode`):
the CLI's one table (`kiln.cli.main`'s docstring says which failure gets which)."""
EXIT_INTERRUPTED = 130
"""A command stopped by Ctrl-C (SIGINT), as shells report it."""

# Progress bars and notes go to stderr so that stdout stays machine-readable.
err_console = Console(stderr=True)
out_console = Console()


class _Written:
    """How many JSON objects this invocation wrote to stdout: the entry point adds an error
    object only when the command has not written its own (stdout holds exactly one)."""

    objects = 0


JsonOption = typer.Option(False, "--json", help="Print one JSON object on stdout.")


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def emit(payload: dict[str, Any], as_json: bool, render: Callable[[Console], None]) -> None:
    """Print `payload` as JSON when asked, else let `render` draw it for a person."""
    if as_json:
        _write(payload)
    else:
        render(out_console)


def error_object(code: str, message: str, exit_code: int) -> dict[str, Any]:
    """What a failed command reports under `--json` (also inside an object a command emits
    before it fails, like a refused promotion's gate table)."""
    return {"code": code, "message": message, "exit_code": exit_code}


def emit_error(code: str, message: str, exit_code: int) -> bool:
    """Write the error object on stdout, unless the command already wrote its one object
    there; returns whether it was written."""
    if _Written.objects:
        return False
    _write({"error": error_object(code, message, exit_code)})
    return True


def reset() -> None:
    """Forget what was written (the entry point runs once per process, tests many times)."""
    _Written.objects = 0


def _write(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=_default) + "\n")
    sys.stdout.flush()
    _Written.objects += 1
