"""Distributed training through the real `kiln` console script: `kiln train --nproc 2` (DDP
over gloo on loopback) trains the model one process trains, a dead rank fails the run, and
bad layouts are exit-2 errors.

Tolerance: the two runs do the same arithmetic in a different order (each rank's half-batch
mean, weighted, then DDP's average, against one mean over the batch), so parameters agree to
float32 rounding: 1e-6 holds (measured 1.5e-7 after 3 epochs); test metrics are equal.
Dropout is off (`dropout=0`): each rank draws its own masks, which one process cannot.

Two hosts: two network namespaces joined by a veth pair, one launcher agent in each (needs
root and `ip netns`; skipped with the reason otherwise). The launcher passes torch's c10d
`is_host` to node 0 and each node's own address on the route to the endpoint.

The dead rank: `_KILN_TRAIN_TEST_KILL=RANK:EPOCH` (kiln.train.distributed.FAULT_HOOK, a test
hook on purpose absent from every command's help) makes that rank SIGKILL itself as that
epoch starts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

import kiln.registry
from kiln.settings import Settings
from kiln.train.distributed import FAULT_HOOK
from tests.conftest import run_kiln

ARGS = (
    "train", "--dataset", "digits", "--model", "mlp", "--model-arg", "dropout=0",
    "--model-arg", "hidden=[64]", "--epochs", "3", "--batch-size", "64", "--seed", "0",
    "--threads", "1", "--no-progress", "--json",
)  # fmt: skip
TIMEOUT_S = 240
SUBNET = "10.231.7"
"""The two namespaces' addresses (a network of their own: nothing outside them sees it)."""


def _versions(kiln_home: Path) -> int:
    with kiln.registry.open(settings=Settings()) as registry:
        return sum(len(registry.list_versions(m.name)) for m in registry.list_models())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`kiln train ARGS` on one process, in a KILN_HOME of its own: the report of the run
    every distributed layout of this module must equal."""
    home = tmp_path_factory.mktemp("one-process") / "kiln-home"
    single = run_kiln(*ARGS, env={"KILN_HOME": str(home)}, timeout=TIMEOUT_S)
    assert single.exit_code == 0, single.stderr
    return dict(single.json())


def test_two_processes_train_the_model_one_process_trains(
    kiln_home: Path, one_process: dict[str, Any]
) -> None:
    runs = kiln_home / "runs"
    runs_before = set(runs.iterdir()) if runs.exists() else set()
    ddp = run_kiln(*ARGS, "--nproc", "2", "--name", "digits", timeout=TIMEOUT_S)
    assert ddp.exit_code == 0, ddp.stderr
    one, two = one_process, ddp.json()

    assert max_difference(one, two) <= 1e-6
    same = ("test_accuracy", "confusion", "best_epoch", "epochs_run", "test_samples")
    assert {k: one["metrics"][k] for k in same} == {k: two["metrics"][k] for k in same}
    assert abs(one["metrics"]["test_loss"] - two["metrics"]["test_loss"]) <= 1e-5

    # One run folder and one version, from rank 0 alone; the run says how it was trained.
    new_runs = set((kiln_home / "runs").iterdir()) - runs_before
    assert [p.name for p in new_runs] == [two["run_id"]]
    summary = json.loads((Path(two["run_dir"]) / "summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 64}
    assert _versions(kiln_home) == 1
    with kiln.registry.open(settings=Settings()) as registry:
        version = registry.get_version("digits", 1)
    assert version.config["train"]["distributed"]["world_size"] == 2
    assert version.lineage.run_id == two["run_id"]


def max_difference(one: dict[str, Any], two: dict[str, Any]) -> float:
    """The largest difference of a parameter between two runs' checkpoints."""
    a, b = load_file(one["checkpoint"]), load_file(two["checkpoint"])
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_two_processes_train_the_regressor_one_process_trains(kiln_home: Path) -> None:
    """A regressor trains its standardised output under DDP (through the wrapped module's
    forward) to the weights of one process: 3.0e-8 measured after 3 epochs on diabetes; its
    test metrics agree to float32 rounding (RMSE 50.4035201 against 50.4035194)."""
    args = (
        "train", "--dataset", "diabetes", "--model", "mlp", "--model-arg", "dropout=0",
        "--epochs", "3", "--batch-size", "32", "--seed", "0", "--threads", "1",
        "--no-progress", "--json",
    )  # fmt: skip
    single = run_kiln(*args, timeout=TIMEOUT_S)
    ddp = run_kiln(*args, "--nproc", "2", timeout=TIMEOUT_S)
    assert single.exit_code == 0 and ddp.exit_code == 0, (single.stderr, ddp.stderr)
    one, two = single.json(), ddp.json()
    assert max_difference(one, two) <= 1e-6
    for key in ("test_rmse", "test_mae", "test_r2", "test_loss"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], rel=1e-6), key
    same = ("best_epoch", "epochs_run", "test_samples")
    assert {k: one["metrics"][k] for k in same} == {k: two["metrics"][k] for k in same}
    assert json.loads((Path(two["run_dir"]) / "summary.json").read_text())["distributed"] == {
        "world_size": 2, "backend": "gloo", "global_batch": 32,
    }  # fmt: skip


def test_a_killed_rank_fails_the_run_and_registers_nothing(kiln_home: Path) -> None:
    result = run_kiln(
        *ARGS, "--nproc", "2", "--name", "digits", env={FAULT_HOOK: "1:2"}, timeout=TIMEOUT_S
    )
    assert result.exit_code == 2, result.stderr
    # stdout holds the launcher's error alone: a surviving rank reports on stderr.
    message = result.json()["error"]["message"]
    assert "rank 1" in message and "SIGKILL" in message, message
    assert "nothing was registered" in message
    assert _versions(kiln_home) == 0
    (run,) = (kiln_home / "runs").iterdir()
    assert not (run / "summary.json").exists()
    assert "rank 1" in json.loads((run / "failure.json").read_text())["error"]


def test_more_processes_than_the_batch_is_an_exit_2_error(kiln_home: Path) -> None:
    result = run_kiln(*ARGS, "--nproc", "65", timeout=TIMEOUT_S)
    assert result.exit_code == 2
    assert "65 processes but --batch-size 64" in result.json()["error"]["message"]


def test_a_rendezvous_port_in_use_is_an_exit_2_error(kiln_home: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        endpoint = f"127.0.0.1:{held.getsockname()[1]}"
        result = run_kiln(*ARGS, "--nproc", "2", "--rdzv-endpoint", endpoint, timeout=TIMEOUT_S)
    assert result.exit_code == 2
    assert "is in use" in result.json()["error"]["message"]


def test_the_test_hook_is_not_in_the_help() -> None:
    help_text = run_kiln("train", "--help").stdout
    assert "--nproc" in help_text and FAULT_HOOK not in help_text and "KILL" not in help_text


def run_agents(commands: list[list[str]], envs: list[dict[str, str]]) -> dict[str, Any]:
    """Run one launcher agent per command at once (each with its `envs` added), check that all
    succeed, and return the one report printed: rank 0's."""
    agents = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for command, env in zip(commands, envs, strict=True)
    ]
    try:
        outputs = [agent.communicate(timeout=TIMEOUT_S) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert [agent.returncode for agent in agents] == [0] * len(agents), [e for _, e in outputs]
    (report,) = [json.loads(out) for out, _ in outputs if out.strip()]
    return dict(report)


def test_two_launcher_agents_meet_at_one_rendezvous(kiln_home: Path) -> None:
    """--nnodes 2 on loopback: two `kiln train` agents, one rank each, as two hosts would run."""
    exe = Path(sys.executable).with_name("kiln")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"127.0.0.1:{port}"
    layout = ("--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-timeout", "60")
    agents = [[str(exe), *ARGS, *layout, "--node-rank", str(node), "--name", "digits"]
              for node in (0, 1)]  # fmt: skip
    # Rank 0 (on whichever agent the rendezvous gave it) alone reports and registers.
    report = run_agents(agents, [{}, {}])
    assert report["registered"]["reference"] == "digits:1"
    assert _versions(kiln_home) == 1
    assert len(list((kiln_home / "runs").iterdir())) == 1


def test_an_unreachable_rendezvous_fails_within_its_timeout(kiln_home: Path) -> None:
    """Node 1 of two, pointed at a port nobody listens on: exit 2 after --rdzv-timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    layout = ("--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", endpoint)
    # The subprocess timeout is the bound (~10 s measured, start-up included).
    result = run_kiln(*ARGS, *layout, "--rdzv-timeout", "3", "--name", "digits", timeout=120)
    assert result.exit_code == 2, result.stderr
    message = result.json()["error"]["message"]
    assert endpoint in message and "within 3 s (--rdzv-timeout)" in message, message
    assert not (kiln_home / "runs").exists() or not list((kiln_home / "runs").iterdir())
    assert not (kiln_home / "registry.db").exists() or _versions(kiln_home) == 0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture
def two_hosts() -> Iterator[list[tuple[str, str, str]]]:
    """Two namespaces joined by a veth pair: (namespace, interface, address) for each."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command here (iproute2): the two-host test needs network namespaces")
    tag = str(os.getpid() % 100_000)
    hosts = [(f"kiln{tag}{side}", f"kv{tag}{side}", f"{SUBNET}.{i + 1}")
             for i, side in enumerate("ab")]  # fmt: skip
    made: list[str] = []
    try:
        for namespace, _, _ in hosts:
            created = _ip("netns", "add", namespace)
            if created.returncode != 0:
                pytest.skip(f"`ip netns add` is not allowed here: {created.stderr.strip()}")
            made.append(namespace)
        (a, va, _), (b, vb, _) = hosts
        steps = [
            ("link", "add", va, "type", "veth", "peer", "name", vb),
            ("link", "set", va, "netns", a),
            ("link", "set", vb, "netns", b),
        ]
        for namespace, interface, address in hosts:
            steps += [
                ("-n", namespace, "addr", "add", f"{address}/24", "dev", interface),
                ("-n", namespace, "link", "set", interface, "up"),
                ("-n", namespace, "link", "set", "lo", "up"),
            ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` failed here: {done.stderr.strip()}")
        yield hosts
    finally:
        for namespace in made:  # the veth pair goes with its namespaces
            _ip("netns", "del", namespace)


@pytest.mark.slow
def test_two_hosts_in_network_namespaces_train_the_model_one_process_trains(
    kiln_home: Path, two_hosts: list[tuple[str, str, str]], one_process: dict[str, Any]
) -> None:
    """Two hosts, as close as one machine gets: two network namespaces joined by a veth pair,
    one agent in each, the c10d rendezvous on the first one's address, gloo on the veth."""
    exe = Path(sys.executable).with_name("kiln")
    endpoint = f"{two_hosts[0][2]}:29400"  # a fresh namespace: every port is free
    layout = ("--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-timeout", "60")
    agents = [["ip", "netns", "exec", namespace, str(exe), *ARGS, *layout,
               "--node-rank", str(node), "--name", "digits"]
              for node, (namespace, _, _) in enumerate(two_hosts)]  # fmt: skip
    envs = [{"GLOO_SOCKET_IFNAME": interface} for _, interface, _ in two_hosts]
    report = run_agents(agents, envs)
    one = one_process
    assert max_difference(one, report) <= 1e-6
    same = ("test_accuracy", "confusion", "best_epoch", "epochs_run", "test_samples")
    assert {k: one["metrics"][k] for k in same} == {k: report["metrics"][k] for k in same}
    assert report["registered"]["reference"] == "digits:1"
    assert _versions(kiln_home) == 1
    summary = json.loads((Path(report["run_dir"]) / "summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 64}
