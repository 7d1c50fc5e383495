"""Fixtures shared by every test: an isolated KILN_HOME and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kiln.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh KILN_HOME for the test; settings read it from the environment as users' do."""
    home = tmp_path / "kiln-home"
    monkeypatch.setenv("KILN_HOME", str(home))
    monkeypatch.delenv("KILN_REGISTRY_URL", raising=False)
    return home


@pytest.fixture
def settings(kiln_home: Path) -> Settings:
    return Settings()


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def cli(kiln_home: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `kiln ARGS` in-process through the real entry point (exit codes included)."""
    from kiln.cli.main import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def run_kiln(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run the installed `kiln` console script in a fresh process."""
    exe = Path(sys.executable).with_name("kiln")
    proc = subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def wait_until(condition: Any, timeout: float, interval: float = 0.1) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass; returns the last answer.

    For states another process reaches on its own schedule (a file appearing, a server
    swapping versions): the test waits on the state itself, never for a fixed time.
    """
    import threading
    import time

    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)
