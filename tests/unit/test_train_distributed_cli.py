"""The distributed options' CLI side (`kiln.cli.distributed`): what a rank is given, and where
its errors go, without starting any process."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import typer
import typer.main

from kiln.cli.distributed import RUN_ID_ENV, rank_args, rank_errors
from kiln.cli.loop import window_end
from kiln.cli.main import app
from kiln.errors import InvalidArgument


def test_the_run_id_variable_is_the_launchers() -> None:
    from kiln.train.launcher import RUN_ID_ENV as LAUNCHER_RUN_ID_ENV

    assert RUN_ID_ENV == LAUNCHER_RUN_ID_ENV


def test_a_rank_gets_the_arguments_and_options_less_the_launchers() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.main.TyperGroup)
    command = group.get_command(typer.Context(group), "retrain")
    assert command is not None
    given = ["digits", "--since", "1h", "--nproc", "2", "--nnodes", "1", "--no-progress", "--json"]
    ctx = command.make_context("retrain", given)
    args = rank_args(ctx, leave_out=("since", "until"))
    assert args[0] == "digits"
    assert "--no-progress" in args and "--json" in args
    assert not {"--nproc", "--nnodes", "--node-rank", "--rdzv-timeout", "--since"} & set(args)
    assert args[args.index("--min-labels") + 1] == "100"


def _fail_in_rank() -> None:
    with rank_errors():
        raise InvalidArgument("bad data")


def test_under_kilns_agent_a_ranks_error_goes_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(RUN_ID_ENV, "run")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(typer.Exit) as exited:
            _fail_in_rank()
        assert exited.value.exit_code == 2
        captured = capsys.readouterr()
        assert captured.out == "" and f"rank {rank}: bad data" in captured.err


def test_under_kilns_agent_a_ranks_bug_goes_to_stderr_with_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(typer.Exit) as exited, rank_errors():
        raise ZeroDivisionError("division by zero")
    assert exited.value.exit_code == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "rank 1: ZeroDivisionError: division by zero" in captured.err


def test_under_plain_torchrun_rank_0_reports_as_any_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    with pytest.raises(InvalidArgument):
        _fail_in_rank()


def test_until_is_an_iso_time_in_utc_unless_it_says_otherwise() -> None:
    assert window_end(None) is None
    assert window_end("2026-12-01T08:00") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    with pytest.raises(InvalidArgument, match="--until 'yesterday' is not an ISO time"):
        window_end("yesterday")
