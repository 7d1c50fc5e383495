"""Run `kiln serve` as a subprocess, exactly as users run it, and stop it as an operator does.

    with kiln_serve("--models", "digits", home=home) as served:
        client = tritonclient.grpc.InferenceServerClient(served.url)

`kiln_serve` starts the server on free ports, waits at most `startup_timeout_s` for its ready
line (`kiln.serving.ready`), and yields where it listens. When the block ends it sends SIGTERM
(the server stops accepting, answers what is in flight, writes its traffic log and exits) and
waits; only a server that outlives `stop_timeout_s` is killed. The server's stdout and stderr
are read all along (or stderr goes to a file), so a chatty server never stalls on a full pipe.

Tests, benchmarks and the demo share this one launcher. It runs the `kiln` console script
beside the running interpreter and imports nothing of the server or the CLI.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kiln.errors import Unavailable
from kiln.serving.ready import Endpoints, parse_ready_line

KILN = Path(sys.executable).with_name("kiln")
"""The `kiln` console script of the interpreter running this (a virtualenv's, say)."""

TAIL_CHARS = 3000
"""How much of the server's log a failed start shows."""


@dataclass
class ServeProcess:
    """A `kiln serve` subprocess that printed its ready line."""

    process: subprocess.Popen[str]
    endpoints: Endpoints
    line: str
    """The ready line as printed (`kiln serve ready: grpc port …; serving …`)."""
    host: str
    """The address clients connect to."""
    log: Path | None
    """The file the server's stderr goes to; None when it is collected in `stderr`."""
    stderr: list[str]
    """The server's stderr lines so far, when there is no `log` file."""

    @property
    def port(self) -> int:
        return self.endpoints.grpc_port

    @property
    def metrics_port(self) -> int | None:
        return self.endpoints.metrics_port

    @property
    def url(self) -> str:
        """`host:port` for a gRPC client."""
        return f"{self.host}:{self.port}"

    @property
    def http_port(self) -> int | None:
        return self.endpoints.http_port

    @property
    def http_url(self) -> str:
        """`host:port` for an HTTP client (`tritonclient.http`'s form: no scheme)."""
        if self.endpoints.http_port is None:
            raise Unavailable("this server was started with --no-http")
        return f"{self.host}:{self.endpoints.http_port}"

    def output(self) -> str:
        """What the server wrote to stderr so far (its log)."""
        return _output(self.log, self.stderr)


@contextlib.contextmanager
def kiln_serve(  # noqa: PLR0913 (keyword-only, each a kiln serve option or a wait)
    *args: str,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    metrics: bool = True,
    http: bool = True,
    log: Path | None = None,
    workers: int | str | None = None,
    startup_timeout_s: float = 120.0,
    stop_timeout_s: float = 60.0,
) -> Iterator[ServeProcess]:
    """Run `kiln serve --host HOST --port 0 [--http-port 0 | --no-http] [--metrics-port 0 |
    --no-metrics] ARGS` until the block ends (see the module docstring).

    `home` becomes KILN_HOME; `env` adds to (or overrides) this process's environment. With
    `log`, the server's stderr is written there, else it is kept in `ServeProcess.stderr`.
    `workers` passes `--workers` (a number or "auto"): the process is then the workers'
    parent, which prints the ready line once every worker is ready and drains them all on
    SIGTERM.
    Raises `Unavailable` with the end of the server's log when it exits before its ready line
    or does not print it within `startup_timeout_s` (it is killed then).
    """
    command = [str(KILN), "serve", "--host", host, "--port", "0",
               *(("--http-port", "0") if http else ("--no-http",)),
               *(("--metrics-port", "0") if metrics else ("--no-metrics",)),
               *(("--workers", str(workers)) if workers is not None else ()), *args]  # fmt: skip
    environment = {**os.environ, **({"KILN_HOME": str(home)} if home else {}), **(env or {})}
    collected: list[str] = []
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("w")) if log else subprocess.PIPE
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=environment
        )
        lines: queue.Queue[str | None] = queue.Queue()
        _pump(process.stdout, lines.put, end=lambda: lines.put(None))
        errors = _pump(process.stderr, collected.append) if log is None else None

        def failed(problem: str) -> Unavailable:
            if errors is not None:
                errors.join(5)  # the rest of what it wrote before it ended
            tail = _output(log, collected)[-TAIL_CHARS:]
            return Unavailable(f"kiln serve {problem} ({' '.join(args)}): {tail}")

        try:
            try:
                ready = _ready_line(lines, startup_timeout_s)
            except TimeoutError:
                process.kill()
                raise failed(f"printed no ready line in {startup_timeout_s:g} s") from None
            if ready is None:  # its stdout closed: it is exiting, or has just exited
                raise failed(f"exited with code {_exit_code(process, stop_timeout_s)}")
            line, endpoints = ready
            connect = "127.0.0.1" if host in ("0.0.0.0", "") else host
            yield ServeProcess(process, endpoints, line, connect, log, collected)
        finally:
            _stop(process, stop_timeout_s)


def _ready_line(lines: queue.Queue[str | None], timeout_s: float) -> tuple[str, Endpoints] | None:
    """The first ready line and what it says; None when stdout ends first (the server is
    exiting); `TimeoutError` when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            return None
        endpoints = parse_ready_line(line)
        if endpoints is not None:
            return line.rstrip("\n"), endpoints
    raise TimeoutError


def _pump(
    stream: IO[str] | None, put: Callable[[str], object], end: Callable[[], object] | None = None
) -> threading.Thread | None:
    """Hand each line of `stream` to `put` on a daemon thread (then call `end`)."""
    if stream is None:
        return None

    def run(lines: Iterable[str]) -> None:
        for line in lines:
            put(line)
        if end is not None:
            end()

    thread = threading.Thread(target=run, args=(stream,), name="kiln-serve-output", daemon=True)
    thread.start()
    return thread


def _stop(process: subprocess.Popen[str], timeout_s: float) -> int:
    """SIGTERM (unless it has exited) and its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return _exit_code(process, timeout_s)


def _exit_code(process: subprocess.Popen[str], timeout_s: float) -> int:
    """Its exit code once it exits; SIGKILL if it has not after `timeout_s`."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _output(log: Path | None, collected: list[str]) -> str:
    if log is None:
        return "".join(collected)
    return log.read_text(errors="replace") if log.exists() else ""
