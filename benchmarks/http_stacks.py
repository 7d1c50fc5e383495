"""HTTP stacks for `kiln serve`'s KServe v2 REST: one handler, served by each candidate server.

    python benchmarks/http_stacks.py                       # concurrency 1, 8, 32; prints a table
    python benchmarks/http_stacks.py --rounds 3 --seconds 3 --json .bench/http-stacks.json

Every stack serves the same transport-neutral handler, `kiln.serving.http.app.HttpApp` (a
parsed `HttpRequest` in, an `HttpResponse` out), over the same `ServingCore` and model, so the
table shows what each server itself costs. Each runs in a server subprocess pinned to core 0
(`taskset -c 0`) with a grpc.aio server in the same event loop (the way `kiln serve` runs
them); the load generator, NVIDIA's perf_analyzer in HTTP mode (binary tensor extension), runs
pinned to core 1. Candidates:

  aiohttp            `kiln.serving.http.server.HttpServer`, the production one: aiohttp's
                     web.Application with one catch-all route, AppRunner, TCPSite
  aiohttp-lowlevel   aiohttp's low-level web.Server (no Application, router or middleware)
  uvicorn-h11        uvicorn.Server(...).serve() in the running loop, a raw ASGI adapter, h11
  uvicorn-httptools  the same with the httptools parser (C, llhttp)
  starlette          uvicorn (httptools) + Starlette with one catch-all Route
  granian-asgi       granian's embedded server (`granian.server.embed`) in the running loop, ASGI
  granian-rsgi       the same with granian's own RSGI interface

Rounds are interleaved (every stack at one concurrency, then the next concurrency, then the
next round; a different stack first each round) and the median of the rounds is reported.
Beside throughput and latency, the server's CPU per request (user + system time of the whole
server process over the requests its core answered): on a shared host waiting for a core
moves throughput, not CPU time, so this column is the steadier comparison of the stacks.
The model is the trainer's CNN digit classifier compiled for onnxruntime (the one
`serving.py` uses, trained into --home on first use). httptools and granian are not Kiln
dependencies (`pip install httptools granian` to measure them): a stack whose package is
missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients import Sample, perf_analyzer
from http_adapters import BenchHandler, serve_stack
from serving import MODEL, REPO, ensure_model

SERVER_CORE, CLIENT_CORE = 0, 1
STACKS = {
    "aiohttp": "aiohttp",
    "aiohttp-lowlevel": "aiohttp",
    "uvicorn-h11": "uvicorn",
    "uvicorn-httptools": "httptools",
    "starlette": "starlette",
    "granian-asgi": "granian",
    "granian-rsgi": "granian",
}
"""Stack -> the package it needs (skipped when that is not installed)."""


async def serve(stack: str, home: Path, args: argparse.Namespace) -> None:
    """Core + gRPC + one HTTP stack in one event loop; prints ports, then serves until killed."""
    import kiln.registry
    from kiln.serving.core import ServingCore
    from kiln.serving.grpc.server import GrpcServer
    from kiln.serving.http.app import HttpApp
    from kiln.serving.repository import RegistryRepository
    from kiln.serving.settings import ServingSettings
    from kiln.settings import Settings
    from kiln_engines import EngineOptions

    settings = ServingSettings(
        host="127.0.0.1", port=0, http_port=0, max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
    )  # fmt: skip
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        options = EngineOptions(intra_op_threads=1)  # the server has one core
        core = ServingCore(RegistryRepository(registry, options=options), settings)
        await core.start([MODEL])
        grpc_server = GrpcServer(core, settings)
        print(f"grpc port {await grpc_server.start()}", flush=True)
        handler = BenchHandler(HttpApp(core, settings), args.replay)
        await serve_stack(stack, handler, core, settings)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class StackServer:
    """A server subprocess: where it listens, and what it has spent."""

    pid: int
    http_port: int
    grpc_port: int

    def cpu_s(self) -> float:
        """User + system CPU of the server process so far (every thread: Rust's, the engine's)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def version(self) -> str:
        """The version it serves (perf_analyzer is told: a replaying server's stats stand still)."""
        import httpx

        url = f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL}"
        return str(httpx.get(url, timeout=10).json()["versions"][-1])

    def inferences(self) -> int:
        """Infer requests the server has answered so far (`BenchHandler`'s count)."""
        import httpx

        return int(httpx.get(f"http://127.0.0.1:{self.http_port}/bench/count", timeout=10).text)


def start_stack(stack: str, args: argparse.Namespace, exits: ExitStack) -> StackServer:
    """The server subprocess for `stack`, pinned to SERVER_CORE, once it answers ready."""
    command = [
        "taskset", "-c", str(SERVER_CORE), sys.executable, __file__, "--serve", stack,
        "--home", str(args.home), "--max-batch-size", str(args.max_batch_size),
        "--max-queue-delay-us", str(args.max_queue_delay_us), *(["--replay"] * args.replay),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # taskset execs
    exits.callback(_stop, process)
    assert process.stdout is not None
    ports: dict[str, int] = {}
    for line in process.stdout:
        if match := re.match(r"(grpc|http) port (\d+)", line):
            ports[match.group(1)] = int(match.group(2))
        if len(ports) == 2:
            _wait_ready(ports["http"])
            return StackServer(process.pid, ports["http"], ports["grpc"])
    raise RuntimeError(f"the {stack} server exited before it was ready")


def measure(stack: str, server: StackServer, concurrency: int, args: argparse.Namespace) -> Any:
    """One perf_analyzer sample of `stack`, with the server's CPU per request beside it: CPU
    time is steadier than throughput on a shared host (waiting for a core costs no CPU)."""
    cpu, count = server.cpu_s(), server.inferences()
    sample = perf_analyzer(
        args.perf_analyzer, server.http_port, MODEL, concurrency, args.seconds, "http",
        server.version,
    )  # fmt: skip
    cpu, count = server.cpu_s() - cpu, server.inferences() - count
    if sample is None:
        return None
    return StackSample(**asdict(sample), cpu_us=cpu / max(count, 1) * 1e6)


@dataclass
class StackSample(Sample):
    cpu_us: float = 0.0
    """Server CPU (all threads) per answered request, in microseconds."""


def _wait_ready(port: int) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no ready answer on http port {port} in 30 s")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def grpc_answers(port: int) -> bool:
    """The gRPC server in the stack's loop still answers (the stack did not take the loop)."""
    import tritonclient.grpc

    client = tritonclient.grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return bool(client.is_model_ready(MODEL))
    finally:
        client.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kiln_engines import host_info

    host = host_info()  # before this process pins itself to one core
    ensure_model(args.home)
    stacks = [s for s in args.stacks if importlib.util.find_spec(STACKS[s]) is not None]
    for missing in sorted(set(args.stacks) - set(stacks)):
        print(f"skipping {missing}: `pip install {STACKS[missing]}` to measure it")
    samples: list[StackSample] = []
    same_loop: dict[str, bool] = {}
    load_before = os.getloadavg()
    with ExitStack() as exits:
        servers = {s: start_stack(s, args, exits) for s in stacks}
        os.sched_setaffinity(0, {CLIENT_CORE})  # perf_analyzer inherits it: `taskset -c 1`
        for round_ in range(args.rounds):
            for c in args.concurrency:
                print(f"round {round_ + 1}/{args.rounds}, concurrency {c}", flush=True)
                # A different stack goes first each round: none always follows the same one.
                shift = round_ % len(stacks)
                for stack in stacks[shift:] + stacks[:shift]:
                    if sample := measure(stack, servers[stack], c, args):
                        sample.target = stack
                        samples.append(sample)
        same_loop = {s: grpc_answers(servers[s].grpc_port) for s in stacks}
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{host.machine}, {host.cpu_count} cores ({host.cpu}), "
        f"{'GPU' if host.gpus else 'no GPU'}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "model": MODEL,
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "replay": args.replay,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
        },
        "grpc_answers_beside_http": same_loop,
        "samples": [asdict(s) for s in samples],
        "summary": summarise(samples, stacks),
    }


def summarise(samples: list[StackSample], stacks: list[str]) -> list[dict[str, Any]]:
    rows = []
    for c in sorted({s.concurrency for s in samples}):
        for stack in stacks:
            group = [s for s in samples if s.target == stack and s.concurrency == c]
            if group:
                rows.append(
                    {
                        "concurrency": c,
                        "stack": stack,
                        "throughput": statistics.median(s.throughput for s in group),
                        "p50_us": statistics.median(s.p50_us for s in group),
                        "p99_us": statistics.median(s.p99_us for s in group),
                        "cpu_us": statistics.median(s.cpu_us for s in group),
                    }
                )
    for row in rows:
        base = next(
            (r for r in rows if r["stack"] == "aiohttp" and r["concurrency"] == row["concurrency"]),
            None,
        )
        row["throughput_vs_aiohttp"] = row["throughput"] / base["throughput"] if base else None
        row["cpu_vs_aiohttp"] = row["cpu_us"] / base["cpu_us"] if base else None
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['machine']}, {result['date']}; settings {result['settings']}")
    print(
        f"load average before {result['load_average_before']}, after {result['load_average_after']}"
    )
    print(f"gRPC answered beside each stack: {result['grpc_answers_beside_http']}")
    print(
        f"{'conc':>4}  {'stack':<18} {'infer/s':>8} {'p50 us':>8} {'p99 us':>8} "
        f"{'CPU us/req':>10}  {'tput vs aiohttp':>15} {'CPU vs aiohttp':>14}"
    )
    for r in result["summary"]:
        tput, cpu = r["throughput_vs_aiohttp"], r["cpu_vs_aiohttp"]
        print(
            f"{r['concurrency']:>4}  {r['stack']:<18} {r['throughput']:>8.0f} {r['p50_us']:>8.0f} "
            f"{r['p99_us']:>8.0f} {r['cpu_us']:>10.0f}  "
            f"{f'{tput:.0%}' if tput else '-':>15} {f'{cpu:.0%}' if cpu else '-':>14}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / ".bench" / "serving-home")
    parser.add_argument("--stacks", nargs="+", choices=list(STACKS), default=list(STACKS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured per sample")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument(
        "--perf-analyzer", type=Path, default=REPO / ".bench" / "perf_analyzer" / "perf_analyzer"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--replay", action="store_true",
        help="answer every infer with the first answer, skipping HttpApp and the model: "
        "what each stack alone costs",
    )  # fmt: skip
    parser.add_argument("--serve", choices=list(STACKS), help=argparse.SUPPRESS)  # the server
    args = parser.parse_args()
    args.home = args.home.resolve()
    if args.serve:
        asyncio.run(serve(args.serve, args.home, args))
        return
    if not args.perf_analyzer.exists():
        sys.exit(
            f"perf_analyzer not found at {args.perf_analyzer}: "
            "../shared/tools/install-perf-analyzer installs it"
        )
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
