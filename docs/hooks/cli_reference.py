"""MkDocs hook: writes the CLI reference page (reference/cli.md) from the typer app at build time.

The page is generated, never written by hand, so it cannot drift from `kiln --help`: every
command, its usage line, its help text, its arguments and options, read from the same click
objects that print `--help`. Run it alone to see the Markdown:
``.venv/bin/python docs/hooks/cli_reference.py``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

PAGE = "reference/cli.md"

_INTRO = """# CLI reference

This page is generated from the `kiln` command itself when the site is built
(`docs/hooks/cli_reference.py` walks the typer app), so it always matches `kiln COMMAND --help`.
Conventions shared by every command (`--json`, exit codes, `--debug`) are on the
[operations page](../user-guide/operations.md#command-line-conventions).
"""


def _value(x: Any) -> Any:
    """Typer wraps unset settings in DefaultPlaceholder; its `.value` is the real default."""
    return getattr(x, "value", x)


def _help_text(command: Any) -> str:
    text = _value(command.help) or ""
    text = inspect.cleandoc(text).split("\f")[0]  # click hides what follows a form feed
    return text.replace("\b\n", "").strip()


def _cell(text: str) -> str:
    """One Markdown table cell: no newlines, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _usage(command: Any, ctx: Any) -> str:
    pieces = command.collect_usage_pieces(ctx)
    return " ".join([ctx.command_path, *pieces])


def _params_tables(command: Any, ctx: Any) -> list[str]:
    arguments: list[tuple[str, str]] = []
    options: list[tuple[str, str]] = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if param.param_type_name == "argument":
            name = param.name.upper()
            if param.nargs == -1:
                name += "..."
            help_ = _value(getattr(param, "help", None)) or ""
            arguments.append((name, help_ if param.required else f"(optional) {help_}"))
        elif record is not None:
            options.append(record)
    lines: list[str] = []
    if arguments:
        lines += ["", "| Argument | Description |", "| --- | --- |"]
        lines += [f"| `{name}` | {_cell(help_)} |" for name, help_ in arguments]
    if options:
        lines += ["", "| Option | Description |", "| --- | --- |"]
        lines += [f"| `{_cell(opts)}` | {_cell(help_)} |" for opts, help_ in options]
    return lines


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _subcommands(command: Any, ctx: Any) -> list[tuple[str, Any, str]]:
    """(name, command, help panel) of the visible subcommands, panel by panel in the order
    `--help` shows them (a panel's place is where its first command is)."""
    if not hasattr(command, "list_commands"):
        return []
    found = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
    visible = [
        (name, sub, _value(sub.rich_help_panel) or "") for name, sub in found if not sub.hidden
    ]
    panels = list(dict.fromkeys(panel for _, _, panel in visible))
    return sorted(visible, key=lambda item: panels.index(item[2]))


def _walk(command: Any, ctx: Any, out: list[str]) -> None:
    import typer._click.core as click_core

    path = ctx.command_path
    # kiln and its commands are level 2, the commands of a group (kiln models list) level 3
    depth = 3 if path.count(" ") > 1 else 2
    out += ["", f"{'#' * depth} `{path}` {{ #{_anchor(path)} }}", "", _help_text(command)]
    out += ["", "```text", _usage(command, ctx), "```"]
    out += _params_tables(command, ctx)
    subs = _subcommands(command, ctx)
    panel: str | None = None
    for name, sub, sub_panel in subs:
        if sub_panel != panel:
            panel = sub_panel
            out += ["", f"**{panel}**" if panel else "**Commands**", ""]
            out += ["| Command | What it does |", "| --- | --- |"]
        short = _cell(sub.get_short_help_str(limit=300))
        out.append(f"| [`{path} {name}`](#{_anchor(f'{path} {name}')}) | {short} |")
    for name, sub, _ in subs:
        _walk(sub, click_core.Context(sub, info_name=name, parent=ctx), out)


def render() -> str:
    """The whole reference page as Markdown."""
    import typer
    import typer._click.core as click_core

    from kiln.cli.main import app

    root = typer.main.get_command(app)
    ctx = click_core.Context(root, info_name="kiln")
    body: list[str] = []
    _walk(root, ctx, body)
    return _INTRO + "\n" + "\n".join(body).strip() + "\n"


def on_files(files: Any, config: Any) -> Any:
    """MkDocs event: add the generated page to the site's files before the nav is built."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """MkDocs event: rebuild the preview when a command's code changes."""
    from pathlib import Path

    server.watch(str(Path(config["config_file_path"]).parent / "platform" / "kiln" / "cli"))
    return server


if __name__ == "__main__":
    print(render())
