"""`kiln serve --workers N` as users run it: N processes behind one gRPC port and one HTTP
port, one metrics endpoint labelling each worker, one SIGTERM that drains them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families

import kiln.registry
from kiln.processes import pid_alive
from kiln.serving.launcher import ServeProcess, kiln_serve
from kiln.serving.workers import WORKER_ENV, parse_workers
from kiln.settings import Settings, usable_cores
from kiln.traffic import scan_traffic
from tests.conftest import wait_until
from tests.integration.grpc_harness import (
    INPUT,
    ONE_THREAD,
    OUTPUT,
    images,
    reference_outputs,
    register,
)

FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""gRPC shares one connection among channels to the same address unless told otherwise; the
kernel spreads connections (not requests) over the workers, so each client needs its own."""
CONNECTIONS = 64
"""Most fresh connections a test opens waiting for every worker to have answered: the kernel
hashes each to one of 2 workers, so all 64 landing on the same one has odds of 2**-63."""


def home_with_digits(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    return home


def scrape(served: ServeProcess) -> dict[str, Any]:
    """The parent's /metrics, as {family name: {worker: summed value}}."""
    url = f"http://127.0.0.1:{served.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            per_worker = found.setdefault(sample.name, {})
            worker = sample.labels.get("worker", "")
            per_worker[worker] = per_worker.get(worker, 0.0) + sample.value
    return found


def answered_by(served: ServeProcess) -> dict[str, float]:
    return scrape(served).get("kiln_inference_success_total", {})


def test_two_workers_share_both_ports_and_drain_on_sigterm(tmp_path: Path) -> None:
    home = home_with_digits(tmp_path)
    x = images(2, seed=3)
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        expected = reference_outputs(registry, "digits", 1, x)
    sent = {"grpc": 0, "http": 0}
    with kiln_serve("digits", home=home, env=ONE_THREAD, workers=2) as served:
        assert "digits:1 (onnx/cpu)" in served.line
        up = scrape(served)["kiln_worker_up"]
        assert up == {"0": 1.0, "1": 1.0}, up  # ready means every worker is ready

        # gRPC: a fresh connection at a time, until both workers have answered some.
        for attempt in range(CONNECTIONS):
            with triton.InferenceServerClient(served.url, channel_args=FRESH_CONNECTION) as client:
                assert client.is_server_ready()
                tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                for _ in range(3):
                    got = client.infer("digits", [tensor]).as_numpy(OUTPUT)
                    np.testing.assert_allclose(got, expected, atol=1e-5)
                    sent["grpc"] += 1
            if attempt >= 1 and len(answered_by(served)) == 2:
                break
        after_grpc = answered_by(served)
        assert set(after_grpc) == {"0", "1"}, after_grpc

        # HTTP (the stock client opens its own connection): until both answer again.
        for _ in range(CONNECTIONS):
            client_http = triton_http.InferenceServerClient(served.http_url)
            try:
                assert client_http.is_server_ready()
                tensor_http = triton_http.InferInput(INPUT, list(x.shape), "FP32")
                tensor_http.set_data_from_numpy(x, binary_data=True)
                for _ in range(3):
                    got = client_http.infer("digits", [tensor_http]).as_numpy(OUTPUT)
                    np.testing.assert_allclose(got, expected, atol=1e-5)
                    sent["http"] += 1
            finally:
                client_http.close()
            now = answered_by(served)
            if all(now.get(w, 0) > after_grpc[w] for w in after_grpc):
                break
        now = answered_by(served)
        assert all(now[w] > after_grpc[w] for w in after_grpc), (after_grpc, now)
        assert sum(now.values()) == sum(sent.values())  # one endpoint counts every worker

        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.output()[-3000:]
    log = served.output()
    assert "all 2 workers are ready" in log and "SIGTERM: stopping 2 workers" in log
    # Each worker wrote its own part files, side by side; every answer is one row.
    parts = list((home / "traffic" / "model=digits").rglob("part-*.parquet"))
    assert len(parts) >= 2, parts
    rows = scan_traffic(home, "digits").frame.collect()
    assert rows.filter(pl.col("status") == "ok").height == rows.height == sum(sent.values())
    by_transport = dict(rows.group_by("transport").len().iter_rows())
    assert by_transport == sent, by_transport


def worker_pids(served: ServeProcess) -> list[int]:
    """The workers' pids, as the parent logs them when it starts them (before it is ready)."""
    assert wait_until(lambda: "pids" in served.output(), timeout=10)
    found = re.search(r"started \d+ workers \(pids ([\d, ]+)\)", served.output())
    assert found, served.output()
    return [int(pid) for pid in found.group(1).split(", ")]


def test_a_worker_that_dies_stops_the_others_with_a_clear_error(tmp_path: Path) -> None:
    home = home_with_digits(tmp_path)
    with kiln_serve("digits", home=home, env=ONE_THREAD, workers=2, metrics=False) as served:
        first, second = worker_pids(served)
        os.kill(second, signal.SIGKILL)
        assert served.process.wait(60) == 1
    log = served.output()
    assert f"worker 1 (pid {second}) was killed by SIGKILL unexpectedly" in log, log
    assert "does not serve with fewer workers than asked" in log
    assert not pid_alive(first)  # the other one was stopped, and reaped


def running(pid: int) -> bool:
    """Alive and not a zombie (a worker whose parent died is reaped by whoever adopts it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return pid_alive(pid) and "\nState:\tZ" not in status


def test_workers_whose_parent_is_killed_drain_and_exit(tmp_path: Path) -> None:
    home = home_with_digits(tmp_path)
    with kiln_serve("digits", home=home, env=ONE_THREAD, workers=2, http=False) as served:
        pids = worker_pids(served)
        served.process.kill()  # no SIGTERM to forward: the workers see their stdin close
        served.process.wait(10)
        assert wait_until(lambda: not any(map(running, pids)), timeout=60), served.output()
    assert served.output().count("unloaded digits:1") == 2  # each drained, none was killed


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_a_bad_workers_value_is_a_usage_error(cli: Any, value: str) -> None:
    result = cli("serve", f"--workers={value}", "--no-metrics")
    assert result.exit_code == 2, result
    assert "--workers takes a whole number of at least 1, or 'auto'" in result.stderr
    assert repr(value) in result.stderr.replace("\n", "")


def test_workers_refuse_bento_and_model_control_and_auto_counts_cores(cli: Any) -> None:
    result = cli("serve", "--bento", "--workers", "2")
    assert result.exit_code == 2, result
    assert "--workers is not supported with --bento" in result.stderr
    result = cli("serve", "--workers", "2", "--model-control", "--no-metrics")
    assert result.exit_code == 2, result
    assert "--model-control is not supported with --workers" in result.stderr
    assert parse_workers("auto") == parse_workers("AUTO") == usable_cores()
    assert usable_cores() <= len(os.sched_getaffinity(0))  # a cgroup quota may lower it


def test_a_worker_environment_without_its_parent_is_refused(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKER_ENV, "0")
    result = cli("serve", "--no-metrics")
    assert result.exit_code == 2, result
    assert f"{WORKER_ENV} is set only in the workers" in result.stderr


def test_a_port_in_use_stops_the_workers_parent_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(Path(sys.executable).with_name("kiln")), "serve", "--host", "127.0.0.1",
             "--port", str(port), "--no-http", "--no-metrics", "--workers", "2", "digits"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "KILN_HOME": str(tmp_path / "home")},
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"port {port} is in use; pick another with --port" in result.stderr, result.stderr
    assert "started" not in result.stderr and "ready" not in result.stdout
