"""`serving.py --pin`: every server on a core of its own, the load generator on another.

    python benchmarks/serving.py --pin                     # concurrency 1, 8, 32
    python benchmarks/serving.py --pin --rounds 5 --json .bench/serving-pinned.json

On a 2-core host this is the only set-up in which serving comparisons repeat: with client and
server sharing cores, every microsecond of either shows up in the other's numbers. Here each
server process (and every thread it starts) runs on the server core (CPU affinity set before
it starts, inherited like `taskset -c`), this process and its asyncio load generator on the
client core. Targets, measured in interleaved rounds (every target at one concurrency, then
the next concurrency, then the next round; the median of the rounds is reported):

  kiln        `kiln serve --no-traffic-log`, gRPC, one engine thread
  kiln-log    a second `kiln serve` with the traffic log on (its cost)
  kiln-http   the first server over KServe v2 HTTP/JSON (aiohttp client, one prebuilt body)
  no-model    a grpc.aio server that answers a precomputed response (`null_server.py`):
              the transport's floor on one core
  mlserver    MLServer 1.7.1 with an onnxruntime runtime over the same ONNX file, when
              `benchmarks/setup_mlserver.sh` has made its virtualenv
  in-process  the same ServingCore in this process, moved to the server core for its samples:
              client tasks and core share that one core, so 1 / throughput is the CPU per
              request of the client loop, the core and the model together, with no transport

Per sample: throughput, p50/p99, the server's CPU per request (every thread of the server
process, from /proc/PID/task/*/schedstat, over the requests answered in the same window) and,
for kiln, the batch sizes and engine time of the window (from ModelStatistics). The model's
own cost per image at each batch size is timed on the server core with the engine alone;
weighted by the batch sizes that occurred, it is the "model" column of the decomposition:

  floor (no-model CPU per request) + model (engine alone, at the batch sizes seen) + Kiln's own

and the limit of one core is 1 / (floor + model): what a server with no cost of its own could
answer. The goal of issue 21 is kiln at >= 85% of that limit at concurrency 32.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from clients import grpc_caller, http_caller, image, kserve_json

REPO = Path(__file__).resolve().parent.parent
MLSERVER_VENV = REPO / ".bench" / "mlserver-venv"


# -- CPU time, statistics ----------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time every live thread of `pid` has run, in ns (scheduler accounting, exact)."""
    total = 0
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # the thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


@dataclass
class Window:
    """What one server did over one measured window (kiln only: the rest have no stats)."""

    executions: int = 0
    images: int = 0
    infer_ns: int = 0
    queue_ns: int = 0
    batches: dict[int, int] = field(default_factory=dict)
    """batch size -> executions of that size."""


async def kiln_statistics(stub: Any, model: str) -> Window:
    from kiln.serving.grpc.generated.inference import grpc_service_pb2 as pb

    reply = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=model))
    stats = reply.model_stats[0]
    return Window(
        stats.execution_count,
        stats.inference_count,
        sum(b.compute_infer.ns for b in stats.batch_stats),
        stats.inference_stats.queue.ns,
        {b.batch_size: b.compute_infer.count for b in stats.batch_stats},
    )


def difference(after: Window, before: Window) -> Window:
    batches = {
        size: count - before.batches.get(size, 0)
        for size, count in after.batches.items()
        if count - before.batches.get(size, 0)
    }
    return Window(
        after.executions - before.executions,
        after.images - before.images,
        after.infer_ns - before.infer_ns,
        after.queue_ns - before.queue_ns,
        batches,
    )


# -- the load generator ------------------------------------------------------------------------

Call = Callable[[], Awaitable[int]]
"""One request; returns its status (200 for an answer)."""


@dataclass
class Sample:
    target: str
    concurrency: int
    round: int
    throughput: float
    p50_us: float
    p99_us: float
    requests: int
    cpu_us_per_request: float
    window: Window | None = None


async def closed_loop(
    call: Call,
    concurrency: int,
    seconds: float,
    warmup: float,
    cpu: Callable[[], int],
    stats: Callable[[], Awaitable[Window]] | None = None,
) -> tuple[list[float], int, float, Window | None]:
    """`concurrency` tasks calling back to back; counts what completes inside the window.

    Returns the latencies (s) of calls completed in the window, the CPU ns `cpu()` grew by
    over it, the window's length and the server's statistics over it.
    """
    latencies: list[float] = []
    failures = 0
    measuring = False
    running = True

    async def worker() -> None:
        nonlocal failures
        while running:
            started = time.perf_counter()
            status = await call()
            if not measuring:
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        before = await stats() if stats else None
        cpu0, t0 = cpu(), time.perf_counter()
        measuring = True
        await asyncio.sleep(seconds)
        measuring = False
        cpu1, t1 = cpu(), time.perf_counter()
        after = await stats() if stats else None
    finally:
        running = False
        await asyncio.gather(*workers)
    window = difference(after, before) if after and before else None
    if failures:
        print(f"  {failures} requests failed; throughput counts answered requests only")
    return latencies, cpu1 - cpu0, t1 - t0, window


def sample(
    target: str, concurrency: int, round_: int, result: tuple[list[float], int, float, Any]
) -> Sample:
    latencies, cpu, elapsed, window = result
    ordered = np.sort(np.asarray(latencies)) * 1e6
    n = len(ordered)
    return Sample(
        target, concurrency, round_, n / elapsed, float(np.percentile(ordered, 50)),
        float(np.percentile(ordered, 99)), n, cpu / 1000 / max(n, 1), window,
    )  # fmt: skip


# -- the model alone ---------------------------------------------------------------------------


def model_cost(engine: Any, max_batch: int, seconds: float = 0.15) -> dict[int, float]:
    """Engine time per execution (µs, median) at every batch size 1..max_batch, on the
    calling thread (which runs on the server core)."""
    costs: dict[int, float] = {}
    sample_image = image()
    for size in range(1, max_batch + 1):
        feed = {"input": np.repeat(sample_image, size, axis=0)}
        for _ in range(20):
            engine.infer(feed)
        times: list[int] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            engine.infer(feed)
            times.append(time.perf_counter_ns() - t0)
        costs[size] = statistics.median(times) / 1000
    return costs


# -- the run -----------------------------------------------------------------------------------


def pin_cores(requested: str | None) -> tuple[int, int]:
    """(server core, client core): the last and first cores this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if requested:
        server, client = (int(c) for c in requested.split(":"))
        if {server, client} - set(allowed) or server == client:
            raise SystemExit(f"--cores {requested}: need two different cores of {allowed}")
        return server, client
    if len(allowed) < 2:
        raise SystemExit(f"--pin needs at least two cores; this process may use {allowed}")
    return allowed[-1], allowed[0]


async def run_pinned(args: argparse.Namespace, model: str, home: Path) -> dict[str, Any]:
    import serving

    import kiln.registry
    from kiln.serving.core import ServingCore
    from kiln.serving.grpc.generated.inference import grpc_service_pb2_grpc as pb_grpc
    from kiln.serving.launcher import kiln_serve
    from kiln.serving.repository import RegistryRepository
    from kiln.serving.settings import ServingSettings
    from kiln.settings import Settings
    from kiln_engines import EngineOptions

    server_core, client_core = pin_cores(args.cores)
    samples: list[Sample] = []
    batcher = [
        "--max-batch-size", str(args.max_batch_size),
        "--max-queue-delay-us", str(args.max_queue_delay_us), "--threads", "1",
    ]  # fmt: skip
    with ExitStack() as stack:
        stack.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))
        os.sched_setaffinity(0, {server_core})  # every server inherits it
        served = stack.enter_context(
            kiln_serve(model, "--no-traffic-log", *batcher, home=home, metrics=False)
        )
        logged = stack.enter_context(kiln_serve(model, *batcher, home=home, metrics=False))
        null_port = serving.start_null(served.port, stack, model)
        pids = {
            "kiln": served.process.pid, "kiln-log": logged.process.pid,
            "no-model": pid_listening(null_port),
        }  # fmt: skip
        ports = {"kiln": served.port, "kiln-log": logged.port, "no-model": null_port}
        if args.mlserver and (MLSERVER_VENV / "bin" / "mlserver").exists():
            from mlserver_target import onnx_artifact, start_mlserver

            onnx = onnx_artifact(home, model)
            ports["mlserver"] = start_mlserver(onnx, model, str(server_core), stack)
            pids["mlserver"] = pid_listening(ports["mlserver"])
        elif args.mlserver:
            print(f"no MLServer at {MLSERVER_VENV}: run benchmarks/setup_mlserver.sh to add it")
        registry = stack.enter_context(kiln.registry.open(settings=Settings(home=home)))
        core = ServingCore(
            RegistryRepository(registry, options=EngineOptions(intra_op_threads=1)),
            ServingSettings(
                max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us
            ),
        )
        await core.start([model])
        engine = core.table.resolve(model).opened.engine
        costs = model_cost(engine, args.max_batch_size)
        os.sched_setaffinity(0, {client_core})
        async with AsyncExitStack() as clients:
            channels = {
                name: pb_grpc.GRPCInferenceServiceStub(
                    await clients.enter_async_context(
                        grpc.aio.insecure_channel(f"127.0.0.1:{ports[name]}")
                    )
                )
                for name in ("kiln", "kiln-log")
            }
            for round_ in range(args.rounds):
                for c in args.concurrency:
                    print(f"round {round_ + 1}/{args.rounds}, concurrency {c}", flush=True)
                    for target in ("kiln", "no-model", "kiln-log", "kiln-http", "mlserver"):
                        if target not in ports and target != "kiln-http":
                            continue
                        pid = pids["kiln" if target == "kiln-http" else target]
                        stub = channels.get("kiln" if target == "kiln-http" else target)
                        stats = (lambda s=stub: kiln_statistics(s, model)) if stub else None
                        caller = (
                            http_caller(served.http_port or 0, kserve_json(model), c)
                            if target == "kiln-http"
                            else grpc_caller(ports[target], model)
                        )
                        async with caller as call:
                            result = await closed_loop(
                                call, c, args.seconds, args.warmup, lambda p=pid: cpu_ns(p), stats
                            )
                        samples.append(sample(target, c, round_, result))
                    os.sched_setaffinity(0, {server_core})
                    try:
                        result = await closed_loop(
                            _in_process(core, model), c, args.seconds, args.warmup,
                            lambda: cpu_ns(os.getpid()),
                        )  # fmt: skip
                    finally:
                        os.sched_setaffinity(0, {client_core})
                    samples.append(sample("in-process", c, round_, result))
        await core.stop()
    return {
        "pinned": {"server_core": server_core, "client_core": client_core},
        "model_us_per_execution": {str(k): round(v, 1) for k, v in costs.items()},
        "samples": [asdict(s) for s in samples],
        "summary": summarise(samples, costs),
    }


def _in_process(core: Any, model: str) -> Call:
    from kiln.serving.messages import InferRequest

    inputs = {"input": image()}

    async def call() -> int:
        await core.infer(InferRequest(model, inputs, transport="benchmark"))
        return 200

    return call


def pid_listening(port: int) -> int:
    """The pid of the process with a socket listening on 127.0.0.1:`port` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(proc.name)
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    raise RuntimeError(f"no process listens on port {port}")


# -- the summary -------------------------------------------------------------------------------


def summarise(samples: list[Sample], costs: dict[int, float]) -> list[dict[str, Any]]:
    """One row per (target, concurrency): medians over rounds, and kiln's decomposition."""
    keyed: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        keyed.setdefault((s.target, s.concurrency), []).append(s)
    rows: list[dict[str, Any]] = []
    for (target, c), group in sorted(keyed.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row: dict[str, Any] = {
            "concurrency": c,
            "target": target,
            "throughput": statistics.median(s.throughput for s in group),
            "p50_us": statistics.median(s.p50_us for s in group),
            "p99_us": statistics.median(s.p99_us for s in group),
            "cpu_us_per_request": statistics.median(s.cpu_us_per_request for s in group),
        }
        windows = [s.window for s in group if s.window is not None and s.window.executions]
        if windows:
            images = sum(w.images for w in windows)
            executions = sum(w.executions for w in windows)
            batches: dict[int, int] = {}
            for w in windows:
                for size, count in w.batches.items():
                    batches[size] = batches.get(size, 0) + count
            row["mean_batch"] = images / executions
            row["engine_us_per_image"] = sum(w.infer_ns for w in windows) / images / 1000
            row["queue_us"] = sum(w.queue_ns for w in windows) / images / 1000
            row["model_us_per_image"] = (
                sum(costs.get(size, costs[max(costs)]) * n for size, n in batches.items()) / images
            )
            row["batches"] = dict(sorted(batches.items()))
        rows.append(row)
    floors = {r["concurrency"]: r for r in rows if r["target"] == "no-model"}
    for row in rows:
        floor = floors.get(row["concurrency"])
        if floor is None:
            continue
        row["vs_no_model"] = row["throughput"] / floor["throughput"]
        row["p50_vs_no_model"] = row["p50_us"] / floor["p50_us"]
        if "model_us_per_image" in row:
            limit = 1e6 / (floor["cpu_us_per_request"] + row["model_us_per_image"])
            row["limit"] = limit
            row["vs_limit"] = row["throughput"] / limit
            row["own_us"] = (
                row["cpu_us_per_request"] - floor["cpu_us_per_request"] - row["model_us_per_image"]
            )
    return rows


def print_pinned(result: dict[str, Any]) -> None:
    pinned = result["pinned"]
    print(f"\nservers on core {pinned['server_core']}, client on core {pinned['client_core']}")
    costs = result["model_us_per_execution"]
    shown = ", ".join(
        f"b{k}: {float(v):.0f}" for k, v in costs.items() if int(k) in (1, 2, 4, 8, 16, 32)
    )
    print(f"model alone, µs per execution: {shown}")
    print(
        f"{'conc':>4}  {'target':<10} {'infer/s':>8} {'p50 us':>8} {'p99 us':>8} "
        f"{'CPU us/req':>10} {'vs no-model':>11} {'batch':>5} {'engine us':>9} "
        f"{'model us':>8} {'own us':>6} {'limit/s':>7} {'vs limit':>8}"
    )
    for r in result["summary"]:

        def num(key: str, fmt: str, r: dict[str, Any] = r) -> str:
            return format(r[key], fmt) if key in r else ""

        print(
            f"{r['concurrency']:>4}  {r['target']:<10} {r['throughput']:>8.0f} "
            f"{r['p50_us']:>8.0f} {r['p99_us']:>8.0f} {r['cpu_us_per_request']:>10.0f} "
            f"{num('vs_no_model', '.0%'):>11} {num('mean_batch', '.1f'):>5} "
            f"{num('engine_us_per_image', '.0f'):>9} {num('model_us_per_image', '.0f'):>8} "
            f"{num('own_us', '.0f'):>6} {num('limit', '.0f'):>7} {num('vs_limit', '.0%'):>8}"
        )
    print(
        "engine us: engine time per image in the server (its statistics); model us: the engine"
        " alone on the server core at the batch sizes that occurred; own us: CPU per request"
        " - no-model's - model us; limit: 1 / (no-model CPU + model us)"
    )
    for r in result["summary"]:
        if r.get("batches") and r["target"] == "kiln":
            total = sum(r["batches"].values())
            common = sorted(r["batches"].items(), key=lambda kv: -kv[1])[:6]
            listed = ", ".join(f"{size}: {count / total:.0%}" for size, count in common)
            print(f"kiln batch sizes at concurrency {r['concurrency']} (executions): {listed}")
