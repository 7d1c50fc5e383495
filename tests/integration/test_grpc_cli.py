"""`kiln serve` as users run it: a subprocess that prints a ready line, serves tritonclient,
and on SIGTERM stops accepting, finishes what is in flight and exits 0."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import tritonclient.grpc as triton

import kiln.registry
from kiln.errors import Unavailable
from kiln.serving.launcher import ServeProcess, kiln_serve
from kiln.settings import Settings
from kiln.traffic import scan_traffic
from tests.integration.grpc_harness import (
    INPUT,
    ONE_THREAD,
    OUTPUT,
    images,
    reference_outputs,
    register,
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeProcess]:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with kiln_serve("--models", "digits", home=home, env=ONE_THREAD) as process:
        yield process


def test_ready_line_names_port_and_models(served: ServeProcess) -> None:
    assert "digits:1 (onnx/cpu)" in served.line
    assert served.endpoints.models == ("digits:1 (onnx/cpu)",)
    assert served.metrics_port is not None


def test_sigterm_finishes_in_flight_requests_and_exits_zero(
    served: ServeProcess, tmp_path: Path
) -> None:
    x = images(4, seed=9)
    tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with triton.InferenceServerClient(served.url) as client:
        assert client.is_server_ready()
        first = client.infer("digits", [tensor]).as_numpy(OUTPUT)
        for _ in range(32):
            client.async_infer(
                "digits", [tensor], callback=lambda result, error: results.put((result, error))
            )
        served.process.send_signal(signal.SIGTERM)
        answers = [results.get(timeout=60) for _ in range(32)]
    assert served.process.wait(60) == 0, served.output()[-2000:]
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


def test_the_launcher_reports_a_server_that_exits_before_it_is_ready(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with pytest.raises(Unavailable) as err, kiln_serve("digts", home=home):
        pytest.fail("kiln serve of an unknown model became ready")
    assert "kiln serve exited with code 2" in err.value.message
    assert "digts" in err.value.message  # the server's own explanation, from its log


def test_the_launcher_stops_waiting_at_its_start_up_timeout(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with (
        pytest.raises(Unavailable, match=r"printed no ready line in 0\.01 s"),
        kiln_serve(home=tmp_path / "home", log=log, startup_timeout_s=0.01),
    ):
        pytest.fail("kiln serve became ready in 10 ms")


@pytest.mark.parametrize("option", ["--port", "--http-port", "--metrics-port"])
def test_a_port_in_use_is_a_clear_error(tmp_path: Path, option: str) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": "0", "--http-port": "0", "--metrics-port": "0", option: str(port)}
        result = subprocess.run(
            [str(Path(sys.executable).with_name("kiln")), "serve", "--host", "127.0.0.1",
             *(x for pair in ports.items() for x in pair), "digits"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "KILN_HOME": str(home)},
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"port {port} is in use; pick another with {option}" in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "ready" not in result.stdout
