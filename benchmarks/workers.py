"""`kiln serve --workers N` benchmark: throughput at concurrency 32 and CPU per request.

    python benchmarks/workers.py                          # 1 and 2 workers; prints a table
    python benchmarks/workers.py --rounds 5 --seconds 4 --json .bench/workers.json
    python benchmarks/workers.py --config 1:1:0 --config 2:0-1:0-1   # WORKERS:SERVER:CLIENT

Each configuration is `kiln serve --workers N` (gRPC, the trainer's CNN compiled for
onnxruntime, no traffic log: the serving stack alone) pinned to a set of cores, measured by
NVIDIA's perf_analyzer (C++, `../shared/tools/install-perf-analyzer`; its gRPC clients open
several connections, which the kernel spreads over the workers) pinned to another set. Pinning
is by CPU affinity, inherited from this process when the server starts: the workers' default
engine threads follow the cores they are given, as they would under `taskset`.

Default configurations: with more cores than the most workers asked, each server gets its
first N cores and the client the rest (no sharing). On a host without a spare core (2 cores
here) that cannot be: the default is then one worker on the last core with the client on the
others (the one-worker reference, no sharing), and every N on all cores with the client on
all cores too (sharing: the client's CPU is part of what the cores do per request).

CPU per request: the server's (parent and workers, from /proc) and the client's (rusage of
perf_analyzer), each over the requests the server answered in the same interval (its own
metrics). With them, the ceiling of a shared-core configuration is cores / (server CPU +
client CPU) per request: what the table's `ceiling` column shows. Servers of every
configuration run at once (idle ones poll the registry only) and rounds interleave them; the
median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients import perf_analyzer
from serving import MODEL, ensure_model

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Config:
    workers: int
    server_cores: tuple[int, ...]
    client_cores: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.workers}w@{_cores(self.server_cores)}/client@{_cores(self.client_cores)}"

    @property
    def shared(self) -> bool:
        return bool(set(self.server_cores) & set(self.client_cores))


@dataclass
class Measurement:
    config: str
    workers: int
    server_cores: str
    client_cores: str
    throughput: float
    p50_us: float
    p99_us: float
    requests: int
    server_us_per_request: float
    client_us_per_request: float


def _cores(cores: tuple[int, ...]) -> str:
    if len(cores) > 1 and cores == tuple(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def parse_cores(text: str) -> tuple[int, ...]:
    cores: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores.extend(range(int(low), int(high or low) + 1))
    return tuple(cores)


def parse_config(text: str) -> Config:
    workers, server, client = text.split(":")
    return Config(int(workers), parse_cores(server), parse_cores(client))


def default_configs(counts: list[int]) -> list[Config]:
    cores = tuple(sorted(os.sched_getaffinity(0)))
    most = max(counts)
    if len(cores) > most:  # a core (or more) for the client alone
        return [Config(n, cores[:n], cores[most:]) for n in counts]
    reference = Config(1, cores[-1:], cores[:-1])
    return [reference, *(Config(n, cores, cores) for n in counts if n <= len(cores))]


@contextlib.contextmanager
def pinned(cores: tuple[int, ...]) -> Iterator[None]:
    """This process (and what it starts meanwhile) on `cores`."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its descendants (from /proc; 0 for a gone process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / TICKS
        children = [
            int(c)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()
        ]
    except OSError:
        return 0.0
    return own + sum(cpu_seconds(c) for c in children)


def answered(metrics_port: int) -> float:
    """Requests the server answered so far (every worker, from its one metrics endpoint)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kiln_inference_success_total{")
    )


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    config: Config, served: Any, pa: Path, concurrency: int, seconds: float
) -> Measurement | None:
    requests_before, server_before = answered(served.metrics_port), cpu_seconds(served.process.pid)
    client_before = client_cpu_seconds()
    with pinned(config.client_cores):
        sample = perf_analyzer(pa, served.port, MODEL, concurrency, seconds)
    requests = answered(served.metrics_port) - requests_before
    server = cpu_seconds(served.process.pid) - server_before
    client = client_cpu_seconds() - client_before
    if sample is None or requests <= 0:
        return None
    return Measurement(
        config.label, config.workers, _cores(config.server_cores), _cores(config.client_cores),
        sample.throughput, sample.p50_us, sample.p99_us, int(requests),
        server / requests * 1e6, client / requests * 1e6,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kiln.serving.launcher import kiln_serve
    from kiln_engines import host_info

    home = args.home.resolve()
    ensure_model(home)
    configs = [parse_config(c) for c in args.config] or default_configs(args.workers)
    pa = args.perf_analyzer
    if not pa.exists():
        sys.exit(f"perf_analyzer not found at {pa}: ../shared/tools/install-perf-analyzer .bench")
    load_before = os.getloadavg()
    samples: list[Measurement] = []
    with ExitStack() as stack:
        servers = []
        for config in configs:
            with pinned(config.server_cores):
                flags = [MODEL, "--no-traffic-log", "--max-batch-size", str(args.max_batch_size)]
                servers.append(
                    stack.enter_context(
                        kiln_serve(*flags, home=home, http=False, workers=config.workers)
                    )
                )
        for round_ in range(args.rounds):
            for config, served in zip(configs, servers, strict=True):
                print(f"round {round_ + 1}/{args.rounds}: {config.label}", flush=True)
                if m := measure(config, served, pa, args.concurrency, args.seconds):
                    samples.append(m)
                time.sleep(0.5)  # let the last requests' CPU settle before the next sample
    host = host_info()
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{host.machine}, {host.cpu_count} cores ({host.cpu}), "
        f"{'GPU' if host.gpus else 'no GPU'}, Python {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "model": f"cnn ({MODEL}), onnxruntime, default engine threads",
            "client": "perf_analyzer -i grpc",
            "concurrency": args.concurrency,
            "max_batch_size": args.max_batch_size,
            "rounds": args.rounds,
            "seconds": args.seconds,
        },
        "samples": [asdict(s) for s in samples],
        "summary": summarise(samples, configs),
    }


def summarise(samples: list[Measurement], configs: list[Config]) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        group = [s for s in samples if s.config == config.label]
        if not group:
            continue
        server_us = statistics.median(s.server_us_per_request for s in group)
        client_us = statistics.median(s.client_us_per_request for s in group)
        cores = len(set(config.server_cores) | set(config.client_cores))
        # What the cores could answer if they did nothing but this server's and client's work.
        if config.shared:
            ceiling = cores * 1e6 / (server_us + client_us)
        else:
            ceiling = min(len(config.server_cores) * 1e6 / server_us,
                          len(config.client_cores) * 1e6 / client_us)  # fmt: skip
        rows.append(
            {
                "config": config.label,
                "workers": config.workers,
                "server_cores": _cores(config.server_cores),
                "client_cores": _cores(config.client_cores),
                "throughput": statistics.median(s.throughput for s in group),
                "p50_us": statistics.median(s.p50_us for s in group),
                "p99_us": statistics.median(s.p99_us for s in group),
                "server_us_per_request": server_us,
                "client_us_per_request": client_us,
                "ceiling": ceiling,
            }
        )
    reference = next((r for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["vs_one_worker"] = row["throughput"] / reference["throughput"] if reference else None
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['machine']}, {result['date']}; settings {result['settings']}")
    print(f"load average before {result['load_average_before']}, "
          f"after {result['load_average_after']}")  # fmt: skip
    print(
        f"{'configuration':<24} {'infer/s':>8} {'p50 us':>8} {'p99 us':>8} {'server us/req':>13}"
        f" {'client us/req':>13} {'ceiling/s':>9} {'vs 1 worker':>11}"
    )
    for r in result["summary"]:
        ratio = r["vs_one_worker"]
        print(
            f"{r['config']:<24} {r['throughput']:>8.0f} {r['p50_us']:>8.0f} {r['p99_us']:>8.0f}"
            f" {r['server_us_per_request']:>13.0f} {r['client_us_per_request']:>13.0f}"
            f" {r['ceiling']:>9.0f} {f'{ratio:.2f}x' if ratio is not None else '':>11}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / ".bench" / "serving-home")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--config", action="append", default=[],
        help="WORKERS:SERVER_CORES:CLIENT_CORES (e.g. 2:0-1:0-1); repeatable; "
        "default: see the module docstring",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured per sample")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--perf-analyzer", type=Path, default=REPO / ".bench" / "perf_analyzer" / "perf_analyzer"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
