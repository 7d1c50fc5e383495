"""The serving container image (deploy/Containerfile, built by deploy/image.sh) run with podman:
a KILN_HOME made on the host, mounted as the image's volume, served to stock tritonclient on a
port published on 127.0.0.1, under a read-only root filesystem, stopped with SIGTERM.

The image is built once per run, and not at all when deploy/image.sh finds it up to date (its
inputs' hash is a label of the image). Skipped where podman is not installed or cannot build
or run containers here (`.ci/run` installs it when it can)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest
import tritonclient.grpc as triton

import kiln.registry
from kiln.serving.ready import parse_ready_line
from kiln.settings import Settings
from tests.integration.grpc_harness import INPUT, OUTPUT, images, reference_outputs, register

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
IMAGE_SH = REPO / "deploy" / "image.sh"
KILN_UID = 10001
"""The image's user (deploy/Containerfile): the mounted home must be its own."""
# Root on this kind of host cannot raise the hard limits podman asks for by default.
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
# podman's own failures (not the container's): no runtime, no storage, no network.
PODMAN_FAILED = (125, 126, 127)


@dataclass(frozen=True)
class Podman:
    """podman with the global flags this host needs (`deploy/image.sh --podman-flags`)."""

    argv: tuple[str, ...]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture(scope="module")
def podman() -> Podman:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here: apt-get install podman runc debootstrap")
    flags = subprocess.run(
        ["bash", str(IMAGE_SH), "--podman-flags"], capture_output=True, text=True, check=True
    ).stdout.split()
    return Podman(("podman", *flags))


@pytest.fixture(scope="module")
def serve_image(podman: Podman) -> str:
    """localhost/kiln-serve:<version>, built (or found up to date) by deploy/image.sh."""
    built = subprocess.run(
        ["bash", str(IMAGE_SH), "serve"], capture_output=True, text=True, timeout=1500, check=False
    )
    if built.returncode == 3:  # image.sh: this host lacks something to build with
        pytest.skip(f"the serving image cannot be built here: {built.stderr.strip()}")
    assert built.returncode == 0, built.stdout + built.stderr
    name = subprocess.run(
        ["bash", str(IMAGE_SH), "--name", "serve"], capture_output=True, text=True, check=True
    ).stdout.strip()
    probe = podman("run", "--rm", *LIMITS, "--entrypoint", "python", name, "-c", "import kiln")
    if probe.returncode in PODMAN_FAILED:
        pytest.skip(f"podman cannot run containers here: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    return name


def test_image_is_a_non_root_serving_install_with_a_health_check(
    podman: Podman, serve_image: str
) -> None:
    image = json.loads(podman("image", "inspect", serve_image).stdout)[0]
    config = image["Config"]
    assert config["User"] == f"{KILN_UID}:{KILN_UID}"
    assert config["Entrypoint"] == ["kiln", "serve"]
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "8002/tcp"}
    assert "/var/lib/kiln" in config["Volumes"]
    assert "KILN_HOME=/var/lib/kiln" in config["Env"]
    assert "grpc_health" in " ".join(image["Healthcheck"]["Test"])  # podman: not in Config
    # DESIGN.md: a serving install needs no torch (nor the trainer's other packages)
    probe = podman(
        "run", "--rm", *LIMITS, "--entrypoint", "python", serve_image, "-c",
        "import importlib.util as u; print([m for m in ('torch', 'onnx', 'sklearn', 'pip') "
        "if u.find_spec(m)])",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


@dataclass
class Container:
    """A `podman run` in the foreground: its output, line by line, on a queue."""

    name: str
    process: subprocess.Popen[str]
    lines: queue.Queue[str | None]
    output: list[str]

    def wait_ready(self, timeout: float) -> None:
        """Block until kiln serve prints its ready line; fail with its output if it exits."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no ready line in {timeout} s:\n" + "".join(self.output))
            if line is None:
                pytest.fail("the container exited before it was ready:\n" + "".join(self.output))
            if parse_ready_line(line.strip()) is not None:
                return


@contextmanager
def running(podman: Podman, image: str, *args: str) -> Iterator[Container]:
    """`podman run ARGS IMAGE` until the block ends; the container is removed afterwards."""
    name = f"kiln-test-{uuid.uuid4().hex[:12]}"
    process = subprocess.Popen(
        [*podman.argv, "run", "--name", name, *LIMITS, *args, image],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, name=f"{name}-output", daemon=True)
    reader.start()
    try:
        yield Container(name, process, lines, output)
    finally:
        podman("rm", "--force", "--time", "0", name)
        process.wait(60)
        reader.join(10)


def own_for_image(home: Path) -> None:
    """Make `home` the image user's, as a volume's owner is set before the container runs."""
    if os.geteuid() == 0:
        for path in [home, *home.rglob("*")]:
            os.chown(path, KILN_UID, KILN_UID, follow_symlinks=False)
    else:  # rootless podman: uid 10001 in the container is one of the user's subordinate uids
        subprocess.run(
            ["podman", "unshare", "chown", "-R", f"{KILN_UID}:{KILN_UID}", str(home)], check=True
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serves_a_mounted_home_read_only_and_drains_on_sigterm(
    podman: Podman, serve_image: str, kiln_home: Path, tmp_path: Path
) -> None:
    registry = kiln.registry.open(settings=Settings(home=kiln_home))
    version = register(registry, tmp_path / "work", "digits", seed=3)
    x = images(4)
    expected = reference_outputs(registry, "digits", version.version, x)
    registry.close()
    own_for_image(kiln_home)
    port = free_port()

    with running(
        podman,
        serve_image,
        # nothing but KILN_HOME (the volume) and /tmp is writable
        "--read-only", "--tmpfs", "/tmp",
        "-v", f"{kiln_home}:/var/lib/kiln",
        "-p", f"127.0.0.1:{port}:8001",
        "-e", "KILN_THREADS=1",
    ) as container:  # fmt: skip
        container.wait_ready(timeout=180)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)  # the published port
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("digits", [tensor])
        assert result.get_response().model_version == str(version.version)
        np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, rtol=1e-5, atol=1e-5)
        client.close()

        health = podman("healthcheck", "run", container.name)
        assert health.returncode == 0, health.stdout + health.stderr

        stopped = podman("stop", "--time", "60", container.name)  # SIGTERM: drain, exit
        assert stopped.returncode == 0, stopped.stderr
        state = podman("inspect", "--format", "{{.State.ExitCode}}", container.name)
        assert state.stdout.strip() == "0", "".join(container.output)

    # the answered request reached the traffic log, in the volume
    parts = sorted((kiln_home / "traffic").rglob("*.parquet"))
    assert parts, "".join(container.output)
    assert pl.read_parquet(parts).height == 1
