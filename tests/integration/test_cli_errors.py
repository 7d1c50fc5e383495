"""How the CLI reports failures, through the real entry point.

The table the entry point promises: usage errors are click's usage message with exit 2, user
errors (`KilnError`) one paragraph with exit 2, bugs exit 1, an interruption 130. `--debug`
works before or after the sub-command; under `--json` an error is one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from kiln.cli.main import app
from tests.conftest import wait_until


def _no_bug(result: Any) -> None:
    assert "internal error" not in result.stderr, result.stderr
    assert "bug in Kiln" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--bogus",), "No such option: --bogus"),
        (("bogus",), "No such command 'bogus'"),
        (("models", "lst"), "No such command 'lst'"),
        (("serve", "--port", "abc"), "Invalid value for '--port'"),
        (("models", "show"), "Missing argument"),
        (("models", "list", "--limit", "3"), "No such option: --limit"),
        (("datasets", "show", "digits", "--seed", "-1"), "Invalid value for '--seed'"),
    ],
)
def test_usage_errors_are_clicks_usage_message_with_exit_2(
    cli: Any, args: tuple[str, ...], fragment: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    _no_bug(result)
    assert "Usage: kiln" in result.stderr
    assert fragment in " ".join(result.stderr.split())


def test_no_arguments_prints_the_help(cli: Any) -> None:
    result = cli()
    _no_bug(result)
    assert "Usage: kiln" in result.stdout + result.stderr
    assert "promote" in result.stdout + result.stderr
    assert result.exit_code in (0, 2)


def test_debug_is_accepted_after_the_sub_command(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = cli("datasets", "show", "nope")
    assert plain.exit_code == 2 and "Traceback" not in plain.stderr
    assert "--debug" in plain.stderr or "kiln datasets list" in plain.stderr
    for args in (("datasets", "show", "nope", "--debug"), ("--debug", "datasets", "show", "nope")):
        debug = cli(*args)
        # The same exit code as without --debug, plus the traceback.
        assert debug.exit_code == 2, (args, debug.stderr)
        assert "Traceback" in debug.stderr and "No such option" not in debug.stderr
    evaluated = cli("evaluate", "m", "--debug")
    assert "No such option" not in evaluated.stderr
    assert evaluated.exit_code == 2, evaluated.stderr  # no model 'm': a user error
    monkeypatch.setenv("KILN_DEBUG", "1")
    assert "Traceback" in cli("datasets", "show", "nope").stderr


def test_a_bug_says_so_and_names_the_debug_flag(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln.cli.models

    def broken() -> None:
        raise ZeroDivisionError("simulated")

    monkeypatch.setattr(kiln.cli.models, "open_registry", broken)
    result = cli("models", "list")
    assert result.exit_code == 1
    assert "internal error" in result.stderr and "--debug" in result.stderr
    as_json = cli("models", "list", "--json")
    assert as_json.exit_code == 1
    assert as_json.json()["error"]["code"] == "internal"


def _commands_taking_json() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in sorted(command.commands.items()):
                walk(sub, (*path, name))
        elif any("--json" in getattr(p, "opts", ()) for p in command.params):
            found.append(path)

    walk(typer.main.get_command(app), ())
    return found


JSON_COMMANDS = _commands_taking_json()


def test_the_json_commands_were_found() -> None:
    assert ("models", "list") in JSON_COMMANDS and ("promote",) in JSON_COMMANDS
    assert ("gc",) in JSON_COMMANDS and len(JSON_COMMANDS) >= 20


def _one_error_object(result: Any, code: str) -> dict[str, Any]:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    payload = json.loads(lines[0])
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert error["code"] == code, error
    assert error["message"] and error["exit_code"] == result.exit_code
    return dict(error)


@pytest.mark.parametrize("path", JSON_COMMANDS, ids=" ".join)
def test_every_json_command_reports_a_usage_error_as_json(cli: Any, path: tuple[str, ...]) -> None:
    result = cli(*path, "--json", "--no-such-option")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    error = _one_error_object(result, "invalid_argument")
    assert "--no-such-option" in error["message"]


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("models", "show", "nope", "--json"), "not_found", "no model 'nope'"),
        (("promote", "x:99999999999999999999", "--json"), "invalid_argument", "version"),
        (("models", "show", "Bad Name", "--json"), "invalid_argument", "not a valid model name"),
        (("datasets", "show", "nope", "--json"), "not_found", "nope"),
    ],
)
def test_user_errors_under_json_are_one_json_object(
    cli: Any, args: tuple[str, ...], code: str, fragment: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    _no_bug(result)
    assert fragment in _one_error_object(result, code)["message"]


def test_a_bad_setting_is_a_user_error(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_THREADS", "many")
    result = cli("models", "list")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    _no_bug(result)
    assert "KILN_THREADS" in result.stderr
    assert _one_error_object(cli("models", "list", "--json"), "invalid_argument")


def test_interrupted_command_exits_130(kiln_home: Path) -> None:
    exe = Path(sys.executable).with_name("kiln")
    env = {**os.environ, "KILN_THREADS": "1"}
    args = ["train", "--dataset", "mnist-5k", "--model", "cnn", "--epochs", "50", "--no-progress"]
    proc = subprocess.Popen(
        [str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        runs = kiln_home / "runs"
        assert wait_until(lambda: any(runs.glob("*/metrics.jsonl")), timeout=120)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "internal error" not in err


def test_exit_code_table_covers_every_error_code() -> None:
    from kiln.cli.main import EXIT_CODES
    from kiln.errors import ErrorCode

    assert set(EXIT_CODES) == set(ErrorCode)
    assert EXIT_CODES[ErrorCode.INTERNAL] == 1
    assert {EXIT_CODES[c] for c in ErrorCode if c is not ErrorCode.INTERNAL} == {2}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("train", "--dataset", "digits", "--seed", "-1"), "--seed must be in 0..4294967295"),
        (("train", "--dataset", "digits", "--seed", "99999999999999999999"), "--seed must be"),
        (("train", "--dataset", "digits", "--threads", "99999999999999999999"), "--threads must"),
        (("evaluate", "digits", "--since", "99999999999999999999d"), "reaches back before"),
    ],
)
def test_out_of_range_numbers_are_user_errors(
    cli: Any, args: tuple[str, ...], fragment: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    _no_bug(result)
    assert fragment in " ".join(result.stderr.split())
