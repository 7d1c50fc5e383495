"""`kiln serve` as users run it: a subprocess that prints a ready line, serves tritonclient,
and on SIGTERM stops accepting, finishes what is in flight and exits 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import tritonclient.grpc as triton

import kiln.registry
from kiln.settings import Settings
from kiln.traffic import scan_traffic
from tests.integration.grpc_harness import INPUT, OUTPUT, images, reference_outputs, register

READY = re.compile(r"kiln serve ready: grpc port (\d+), metrics port (\d+); serving (.+)")


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int, line: str) -> None:
        self.process = process
        self.port = port
        self.line = line
        self.stderr: list[str] = []


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("kiln")), "serve", "--port", "0",
         "--metrics-port", "0", "--host", "127.0.0.1", "--models", "digits"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KILN_HOME": str(home), "KILN_THREADS": "1"},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in process.stdout or ()], daemon=True
    ).start()
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(process.stderr or ()), daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        process.kill()
        pytest.fail(f"kiln serve printed no ready line; stderr: {''.join(errors)[-2000:]}")
    match = READY.match(line)
    assert match, line
    result = Served(process, int(match.group(1)), line)
    result.stderr = errors
    yield result
    if process.poll() is None:
        process.kill()
        process.wait(30)


def test_ready_line_names_port_and_models(served: Served) -> None:
    assert "digits:1 (onnx/cpu)" in served.line


def test_sigterm_finishes_in_flight_requests_and_exits_zero(served: Served, tmp_path: Path) -> None:
    x = images(4, seed=9)
    tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with triton.InferenceServerClient(f"127.0.0.1:{served.port}") as client:
        assert client.is_server_ready()
        first = client.infer("digits", [tensor]).as_numpy(OUTPUT)
        for _ in range(32):
            client.async_infer(
                "digits", [tensor], callback=lambda result, error: results.put((result, error))
            )
        served.process.send_signal(signal.SIGTERM)
        answers = [results.get(timeout=60) for _ in range(32)]
    assert served.process.wait(60) == 0, "".join(served.stderr)[-2000:]
    # Requests already sent when SIGTERM arrived were answered; any the server had not yet
    # received are refused cleanly (UNAVAILABLE), never cut off half way.
    for result, error in answers:
        if error is None:
            np.testing.assert_array_equal(result.as_numpy(OUTPUT), first)
        else:
            assert error.status() == "StatusCode.UNAVAILABLE", error
            assert "shutting down" in error.message()
    assert any(error is None for _, error in answers)
    with kiln.registry.open(settings=Settings(home=tmp_path / "home")) as registry:
        np.testing.assert_allclose(first, reference_outputs(registry, "digits", 1, x), atol=1e-5)
    # Traffic logging is on by default: every request the server saw is a row, written before
    # the process exited (the answered ones with status ok).
    rows = scan_traffic(tmp_path / "home", "digits").frame.collect()
    answered = 1 + sum(error is None for _, error in answers)
    assert rows.filter(pl.col("status") == "ok").height == answered


def test_a_model_that_cannot_be_served_stops_startup_with_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("kiln")), "serve", "--port", "0", "--no-metrics",
         "digits", "digts"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KILN_HOME": str(home)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "ready" not in result.stdout
    assert "digts" in result.stderr and "digits" in result.stderr  # names it, suggests the fix


@pytest.mark.parametrize("option", ["--port", "--metrics-port"])
def test_a_port_in_use_is_a_clear_error(tmp_path: Path, option: str) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": "0", "--metrics-port": "0", option: str(port)}
        result = subprocess.run(
            [str(Path(sys.executable).with_name("kiln")), "serve", "--host", "127.0.0.1",
             *(x for pair in ports.items() for x in pair), "digits"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "KILN_HOME": str(home)},
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"port {port} is in use; pick another with {option}" in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "ready" not in result.stdout
