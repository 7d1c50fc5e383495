"""`kiln train --nproc N` (and `kiln retrain --nproc N`): N local training processes through
torch's elastic launcher (the agent `torchrun` runs), each running `python -m kiln.train ARGS`
(`python -m kiln.loop ARGS`); with `--nnodes` several such agents, one per host, meet at one
c10d rendezvous endpoint.

The agent starts the ranks, sets the torch.distributed environment they read
(`kiln.train.distributed.World`), and, when one rank fails, stops the others: a dead rank
fails the whole run within the agent's monitor interval, never a hang. `LaunchFailed` names
the rank and how it ended; the run folder gets `failure.json` saying the same.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import InvalidArgument, Unavailable

RUN_ID_ENV = "KILN_TRAIN_RUN_ID"
"""The run id the launcher picks and every rank trains under, so the launcher can find the
run folder of a run that failed."""
RUN_FAILED = "failure.json"
MONITOR_INTERVAL_S = 0.5
"""How often the agent checks its ranks: a dead rank stops the run about this soon."""


class LaunchFailed(Unavailable):
    """A rank of a distributed training run failed; the run was stopped, nothing registered
    (a rank's own error, e.g. a bad option, is on stderr above the message)."""


@dataclass(frozen=True)
class Layout:
    """Where the ranks run: processes per node, nodes, this node's rank, the rendezvous."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_timeout_s: int = 300

    @property
    def distributed(self) -> bool:
        return self.nproc * self.nnodes > 1

    def validate(self, batch_size: int) -> None:
        """Raises InvalidArgument for a layout no run could have."""
        if self.nproc < 1 or self.nnodes < 1:
            raise InvalidArgument(
                f"--nproc and --nnodes must be at least 1, got {self.nproc}, {self.nnodes}"
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise InvalidArgument(
                f"--node-rank must be in 0..{self.nnodes - 1} for --nnodes {self.nnodes}, "
                f"got {self.node_rank}"
            )
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise InvalidArgument(
                "--nnodes > 1 needs --rdzv-endpoint HOST:PORT, the same on every node "
                "(node 0's address, e.g. --rdzv-endpoint 10.0.0.1:29400)"
            )
        world = self.nproc * self.nnodes
        if world > batch_size:
            raise InvalidArgument(
                f"{world} processes but --batch-size {batch_size}: every process takes a "
                f"share of each batch; use at most {batch_size} processes or a larger batch"
            )

    def endpoint(self) -> tuple[str, int]:
        """The rendezvous host and port; a free loopback port when none was given.

        Raises InvalidArgument for a malformed endpoint or, on node 0 when the host is this
        machine, a port something else holds.
        """
        if self.rdzv_endpoint is None:
            return "127.0.0.1", free_port()
        host, sep, port = self.rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(
                f"--rdzv-endpoint must be HOST:PORT (e.g. 127.0.0.1:29400), "
                f"got '{self.rdzv_endpoint}'"
            )
        if self.node_rank == 0 and is_loopback(host) and not port_free(int(port)):
            raise InvalidArgument(
                f"--rdzv-endpoint {self.rdzv_endpoint}: port {port} is in use on this host; "
                "pick another port (the same on every node)"
            )
        return host, int(port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def route_address(host: str, port: int) -> str:
    """This host's address on the route to `host` (a UDP socket's connect picks the route
    and sends nothing).

    Raises InvalidArgument when `host` does not resolve or no route leads to it.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.connect(address)
            return str(s.getsockname()[0])
    except OSError as exc:
        raise InvalidArgument(
            f"--rdzv-endpoint {host}:{port}: this host cannot route to it ({exc}); use node "
            "0's address as the other nodes reach it"
        ) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(
    layout: Layout, args: list[str], *, run_id: str, runs_dir: Path, module: str = "kiln.train"
) -> None:
    """Run `python -m MODULE ARGS` on `layout.nproc` local ranks (this node's share): MODULE
    is `kiln.train` (`kiln train`) or `kiln.loop` (`kiln retrain`).

    Raises LaunchFailed naming the failed rank(s), Unavailable when the rendezvous cannot be
    reached in `layout.rdzv_timeout_s`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousConnectionError,
        RendezvousError,
    )
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    host, port = layout.endpoint()
    if is_loopback(host):
        # gloo picks an interface by the hostname, which need not be loopback; the ranks of
        # a loopback rendezvous are all here, so loopback is the one that works.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ[RUN_ID_ENV] = run_id
    config = LaunchConfig(
        min_nodes=layout.nnodes,
        max_nodes=layout.nnodes,
        nproc_per_node=layout.nproc,
        # The rendezvous's id, the same on every node (the run ids differ per node).
        run_id="kiln-train",
        rdzv_backend="c10d",
        rdzv_endpoint=f"{host}:{port}",
        # Node 0 hosts the rendezvous store; without is_host, agents in other network
        # namespaces time out instead of meeting (the measurement).
        # read_timeout bounds connecting to the store too: without it, a node that cannot
        # reach node 0 waits torch's 60 s per try (measured ~150 s) whatever --rdzv-timeout.
        rdzv_configs={
            "is_host": layout.node_rank == 0,
            "join_timeout": layout.rdzv_timeout_s,
            "read_timeout": layout.rdzv_timeout_s,
        },
        max_restarts=0,
        monitor_interval=MONITOR_INTERVAL_S,
        # The address the other nodes reach this one at (rank 0's becomes MASTER_ADDR);
        # torch's default, the host name, may resolve to an address they cannot reach.
        local_addr=route_address(host, port),
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", module, *args)
    except ChildFailedError as exc:
        message = failure_message(exc)
        record_failure(runs_dir / run_id, message)
        raise LaunchFailed(message) from None
    except RendezvousConnectionError:
        raise Unavailable(
            f"cannot reach the training rendezvous at {host}:{port} within "
            f"{layout.rdzv_timeout_s} s (--rdzv-timeout): start node 0 (--node-rank 0) with "
            "the same --rdzv-endpoint, and check that this host can reach that address and port"
        ) from None
    except RendezvousError as exc:
        raise Unavailable(
            f"the training rendezvous at {host}:{port} did not complete within "
            f"{layout.rdzv_timeout_s} s ({type(exc).__name__}): start every node with the "
            f"same --rdzv-endpoint and --nnodes {layout.nnodes}, node 0 first, and check that "
            "the port is reachable from every node"
        ) from None


def failure_message(exc: object) -> str:
    """ "rank 1 was killed by SIGKILL; rank 0 exited with code 2" from a ChildFailedError,
    the first failure (the root cause) first."""
    failures = getattr(exc, "failures", {})
    parts = []
    for rank, failure in sorted(failures.items(), key=lambda kv: kv[1].timestamp):
        if failure.exitcode < 0:
            how = f"was killed by {failure.signal_name()}"
        else:
            how = f"exited with code {failure.exitcode}"
        parts.append(f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) {how}")
    first = parts[0] if parts else "a rank failed"
    rest = f"; then {'; '.join(parts[1:])}" if len(parts) > 1 else ""
    return (
        f"distributed training failed: {first}{rest}. The run was stopped and nothing was "
        "registered; the failed rank's own error, if it printed one, is above"
    )


def record_failure(run_dir: Path, message: str) -> None:
    """Say in the run folder (when rank 0 had made it) why the run never finished."""
    if run_dir.is_dir():
        (run_dir / RUN_FAILED).write_text(json.dumps({"error": message}) + "\n")
