"""How `kiln --help` looks: the panels grouping the commands, and option tables that never
cut an option's name.

typer draws an option as five columns (long name, short name, the `--no-` form, its short
form, the type) beside its help; at 80 columns rich shrinks every column, names included
(`--max-queue-delay…`, `--token-for-inference…`). Kiln draws those panels with the names in
one column (a `--no-` form on a line of its own) that is never shrunk, so only the types and
the help text wrap. Flags show no type: they take no value.
"""

from __future__ import annotations

import inspect
from typing import Any, Final, Literal

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer import rich_utils

# The panels of `kiln --help`, in the order of the loop (typer prints them as first used).
START = "Getting started"
DATA = "Data & training"
REGISTRY = "Registry"
COMPILE = "Compile & engines"
SERVING = "Serving"
TRAFFIC = "Traffic & evaluation"
LOOP = "Loop"

MARKUP: Final[Literal["markdown"]] = "markdown"
"""Help text is Markdown: a docstring's hard-wrapped lines join into paragraphs, and text in
square brackets stays text (Rich markup would swallow a `[fastest]`)."""

_PANEL_PARAMETERS = ("name", "params", "ctx", "markup_mode", "console")


def _names(param: Any) -> Text:
    long = [o for o in param.opts if o.startswith("--")]
    short = [o for o in param.opts if not o.startswith("--")]
    if param.param_type_name == "argument":
        first = [param.display_name_raw + ("..." if param.nargs != 1 else "")]
    else:
        first = [*long, *short]
    text = rich_utils.highlighter(Text(", ".join(first)))
    if param.secondary_opts:
        text.append("\n")
        text.append(", ".join(param.secondary_opts), style=rich_utils.STYLE_NEGATIVE_OPTION)
    return text


def _value(param: Any, ctx: Any) -> Text:
    if getattr(param, "is_flag", False):
        return Text("")
    # Spaces between choices (<fp32 | fp16 | bf16>) let a long list wrap like the help does.
    shown = (param.display_type_rich(ctx=ctx) or "").replace("|", " | ")
    text = Text(shown, style=rich_utils.STYLE_TYPES)
    bounds = param._get_number_range_help_str()
    if bounds:
        text.append(rich_utils.RANGE_STRING.format(bounds))
    return text


def print_options_panel(
    *, name: str, params: list[Any], ctx: Any, markup_mode: Any, console: Console
) -> None:
    """typer's `_print_options_panel`, with the names in one column that is never shrunk."""
    if not params:
        return
    table = Table(show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for param in params:
        table.add_row(
            _names(param),
            _value(param, ctx),
            rich_utils._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode),
        )
    console.print(
        Panel(
            table,
            border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER,
            title=name,
            title_align=rich_utils.ALIGN_OPTIONS_PANEL,
        )
    )


def install() -> None:
    """Draw typer's argument and option panels with `print_options_panel`, where typer's
    drawing function is the one this was written against (else typer's own stays)."""
    current = getattr(rich_utils, "_print_options_panel", None)
    if current is None or not hasattr(rich_utils, "_get_parameter_help"):
        return
    if tuple(inspect.signature(current).parameters) == _PANEL_PARAMETERS:
        rich_utils._print_options_panel = print_options_panel
