"""Two hosts, as close as one machine gets: two network namespaces joined by a veth pair, one
`kiln train` agent in each with `--nnodes 2`, the c10d rendezvous on the first namespace's
address and gloo on the veth (GLOO_SOCKET_IFNAME). The launcher passes torch's `is_host` to
node 0 and each node's own address on the route to the endpoint; the ranks train the model
one process trains. Needs root and `ip netns` (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_kiln
from tests.integration.test_train_distributed import (
    ARGS,
    TIMEOUT_S,
    _versions,
    max_difference,
    run_agents,
)

pytestmark = pytest.mark.slow
SUBNET = "10.231.7"


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


def test_two_hosts_in_network_namespaces_train_the_model_one_process_trains(
    kiln_home: Path, two_hosts: list[tuple[str, str, str]]
) -> None:
    single = run_kiln(*ARGS, timeout=TIMEOUT_S)
    assert single.exit_code == 0, single.stderr
    versions_before = _versions(kiln_home)
    exe = Path(sys.executable).with_name("kiln")
    endpoint = f"{two_hosts[0][2]}:29400"  # a fresh namespace: every port is free
    layout = ("--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-timeout", "60")
    agents = [["ip", "netns", "exec", namespace, str(exe), *ARGS, *layout,
               "--node-rank", str(node), "--name", "digits"]
              for node, (namespace, _, _) in enumerate(two_hosts)]  # fmt: skip
    envs = [{"GLOO_SOCKET_IFNAME": interface} for _, interface, _ in two_hosts]
    report = run_agents(agents, envs)
    one = single.json()
    assert max_difference(one, report) <= 1e-6
    same = ("test_accuracy", "confusion", "best_epoch", "epochs_run", "test_samples")
    assert {k: one["metrics"][k] for k in same} == {k: report["metrics"][k] for k in same}
    assert report["registered"]["reference"] == "digits:1"
    assert _versions(kiln_home) == versions_before + 1
    summary = json.loads((Path(report["run_dir"]) / "summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 64}
