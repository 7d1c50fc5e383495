"""Real `bentoml serve` subprocesses for tests: started on a free port, awaited on /readyz."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from kiln.compile import CompileOptions, compile_version
from kiln.registry import Registry
from kiln.settings import Settings
from kiln.train import TrainConfig, register_result, train

BENTOML = str(Path(sys.executable).with_name("bentoml"))
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_and_register(registry: Registry, settings: Settings, name: str, seed: int) -> int:
    """Train a small real model (digits, mlp), register it, compile it for onnxruntime."""
    result = train(
        TrainConfig(dataset="digits", model="mlp", epochs=2, seed=seed),
        settings,
        show_progress=False,
    )
    version = register_result(registry, name, result)
    compile_version(
        registry, version.ref, CompileOptions(measure_seconds=0.0, parity_samples=64), settings
    )
    return version.version


@contextmanager
def bento_serve(
    target: str,
    env: dict[str, str],
    cwd: Path = REPO,
    log_path: Path | None = None,
    command: list[str] | None = None,
) -> Iterator[str]:
    """Run `bentoml serve TARGET` (or `command`) and yield its URL once /readyz answers 200.

    The server's output goes to `log_path` (a temporary file by default), whose tail is shown
    when the server fails to start.
    """
    port = free_port()
    log_path = log_path or Path(tempfile.mkstemp(prefix="bentoml-serve-", suffix=".log")[1])
    log = log_path.open("wb")
    argv = command or [BENTOML, "serve", target]
    proc = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    pause = threading.Event()
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"bentoml serve exited: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready in 120 s: {_tail(log_path)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            pause.wait(0.2)  # between readiness probes
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tail(path: Path, size: int = 4000) -> str:
    return path.read_bytes()[-size:].decode(errors="replace")
