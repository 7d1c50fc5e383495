"""`kiln --help` and every command's help, through the real entry point at 80 columns: the
panels, option names never cut, and choices that match what the library accepts."""

from __future__ import annotations

import re
from typing import Any, get_args, get_type_hints

import pytest
import typer

from kiln.cli import help_layout
from kiln.cli.main import app


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = _commands()


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "kiln" for p, _ in COMMANDS]
)
def test_help_fits_80_columns_with_every_option_name_whole(
    cli: Any, monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...], command: Any
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    names = [n for p in command.params for n in (*p.opts, *p.secondary_opts) if n.startswith("-")]
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.stdout), (name, path)


def test_the_commands_are_grouped_in_panels_along_the_loop(cli: Any) -> None:
    shown = cli("--help").stdout
    panels = [help_layout.START, help_layout.DATA, help_layout.REGISTRY, help_layout.COMPILE,
              help_layout.SERVING, help_layout.TRAFFIC, help_layout.LOOP]  # fmt: skip
    assert [shown.index(f"─ {p} ") for p in panels] == sorted(
        shown.index(f"─ {p} ") for p in panels
    )
    assert "─ Commands " not in shown  # every command is in a panel
    root = typer.main.get_command(app)
    visible = [n for n, c in root.commands.items() if not c.hidden]  # type: ignore[attr-defined]
    assert len(visible) >= 17
    for name in visible:
        assert re.search(rf"│ {name} ", shown), name


def test_gc_is_a_models_command_and_the_old_name_still_works(cli: Any) -> None:
    assert "gc" in cli("models", "--help").stdout
    assert not re.search(r"│ gc ", cli("--help").stdout)  # the alias is hidden
    assert cli("models", "gc", "--dry-run", "--json").json()["dry_run"] is True
    assert cli("gc", "--dry-run", "--json").json()["dry_run"] is True


def test_choices_are_what_the_library_accepts() -> None:
    from kiln.cli.bento import EngineKind
    from kiln.cli.compile import TARGET_CHOICES, Precision
    from kiln.cli.loop import Approval
    from kiln.compile import PRECISIONS, TARGETS
    from kiln.loop.watch import LoopPolicy
    from kiln.serving.bento.store import EXPORTABLE

    assert get_args(Precision) == tuple(PRECISIONS)
    assert (*TARGETS, "all") == TARGET_CHOICES
    assert get_args(EngineKind) == tuple(EXPORTABLE)
    assert get_args(Approval) == get_args(get_type_hints(LoopPolicy)["approve"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("compile", "digits", "--precision", "fp8"), "'fp8' is not one of 'fp32'"),
        (("loop", "digits", "--approve", "maybe"), "'maybe' is not one of 'auto'"),
        (("bento", "export", "digits", "--kind", "plan"), "'plan' is not one of"),
        (("train", "--compile", "tflite"), "'tflite' is not one of"),
    ],
)
def test_a_value_outside_the_choices_is_a_usage_error(
    cli: Any, args: tuple[str, ...], fragment: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Usage: kiln" in result.stderr
    assert fragment in " ".join(result.stderr.split())
