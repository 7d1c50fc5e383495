"""How commands report: rich tables for people, one JSON object on stdout for scripts.

Every reporting command takes `--json`. In JSON mode nothing but the one object reaches
stdout (progress and notes go to stderr), so `kiln ... --json | jq` always works.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

# Progress bars and notes go to stderr so that stdout stays machine-readable.
err_console = Console(stderr=True)
out_console = Console()

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
        sys.stdout.write(json.dumps(payload, default=_default) + "\n")
        sys.stdout.flush()
    else:
        render(out_console)
