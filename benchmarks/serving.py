"""Serving benchmark: `kiln serve` (gRPC and HTTP) vs the in-process engine vs a no-model server.

    python benchmarks/serving.py                          # concurrency 1, 8, 32; prints a table
    python benchmarks/serving.py --rounds 5 --seconds 4 --json .bench/serving.json
    python benchmarks/serving.py --pin          # servers on one core, client on another

Targets, side by side in one run:
  (a) kiln       `kiln serve` in a subprocess, exactly as users run it;
  (b) in-process the same ServingCore (dynamic batcher + engine, same settings) called from
                 asyncio tasks in this process: no transport at all;
  (c) no-model   a grpc.aio server on Kiln's generated stubs that answers every ModelInfer with
                 a precomputed response (`null_server.py`): the ceiling of this harness
                 (client + grpc.aio + host);
  (d) kiln-http  the same `kiln serve` process over KServe v2 HTTP/REST (--http-port):
                 perf_analyzer `-i http` (Triton's binary tensor extension) and the HTTP
                 client below with a prebuilt KServe v2 JSON body; HTTP/gRPC is its
                 throughput over kiln's (gRPC) with the same kind of client;
  (e) bentoml    `bentoml serve kiln.serving.bento:KilnService` (the same core behind BentoML's
                 HTTP server and adaptive batching), /predict with JSON from the same client.
HTTP targets' no-model ratios are to the gRPC no-model server with the Python client.
Clients (`clients.py`): NVIDIA's perf_analyzer (C++, when installed:
../shared/tools/install-perf-analyzer), a Python gRPC client (grpc.aio stub, one prebuilt
request, N tasks) and a Python HTTP client (an aiohttp ClientSession, one prebuilt JSON body, N
tasks: the same client for kiln-http and bentoml, so the two HTTP services compare on one
client; httpx, used before, was itself the limit at concurrency 32).

Measurements are interleaved round by round (every target at one concurrency, then the next
concurrency, then the next round) and the median of the rounds is reported, so background
load on a shared host affects every target alike. The model is the trainer's CNN digit
classifier compiled for onnxruntime; it is trained and compiled into --home on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients import (
    Sample,
    bento_json,
    grpc_client,
    http_client,
    in_process,
    kserve_json,
    perf_analyzer,
)
from serving_pinned import print_pinned, run_pinned

REPO = Path(__file__).resolve().parent.parent
KILN = Path(sys.executable).with_name("kiln")
NULL_SERVER = Path(__file__).with_name("null_server.py")
MODELS = {"cnn": "digits", "mlp": "digits-mlp"}
"""Architecture (`kiln train --model`) -> the name it is registered under in --home."""
MODEL = MODELS["cnn"]  # set by --model
ARCH = "cnn"


# -- the model --------------------------------------------------------------------------------


def ensure_model(home: Path) -> None:
    """Train, compile and promote the digit classifier into `home` unless it is there."""
    env = {**os.environ, "KILN_HOME": str(home)}
    probe = subprocess.run(
        [str(KILN), "models", "show", MODEL, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode == 0 and '"production"' in probe.stdout:
        return
    print(f"preparing {MODEL} in {home}: train 1 epoch, compile for onnxruntime, promote")
    for args in (
        ["train", "--model", ARCH, "--epochs", "1", "--name", MODEL, "--no-progress"],
        ["compile", f"{MODEL}:1", "--target", "onnxruntime"],
        ["promote", f"{MODEL}:1", "--reason", "serving benchmark"],
    ):
        subprocess.run([str(KILN), *args], env=env, check=True, stdout=subprocess.DEVNULL)


# -- the servers ------------------------------------------------------------------------------


def start_kiln(home: Path, args: argparse.Namespace, stack: ExitStack) -> tuple[int, int]:
    """`kiln serve` with gRPC and HTTP on free ports; returns (grpc port, http port)."""
    from kiln.serving.launcher import kiln_serve

    flags = [
        MODEL, "--no-traffic-log",  # the serving stack alone; the logger has its own benchmark
        "--max-batch-size", str(args.max_batch_size),
        "--max-queue-delay-us", str(args.max_queue_delay_us),
    ]  # fmt: skip
    if args.threads:
        flags += ["--threads", str(args.threads)]
    served = stack.enter_context(kiln_serve(*flags, home=home, metrics=False))
    assert served.http_port is not None  # kiln_serve passes --http-port 0
    return served.port, served.http_port


def start_bento(home: Path, args: argparse.Namespace, stack: ExitStack) -> int:
    """`bentoml serve` of Kiln's BentoML service on a free port; returns it once /readyz is 200."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {
        **os.environ, "KILN_HOME": str(home), "KILN_MODEL": MODEL,
        "KILN_BENTO_TRAFFIC_LOG": "false", "KILN_BENTO_MAX_BATCH_SIZE": str(args.max_batch_size),
    }  # fmt: skip
    if args.threads:
        env["KILN_BENTO_THREADS"] = str(args.threads)
    bentoml = Path(sys.executable).with_name("bentoml")
    process = subprocess.Popen(
        [str(bentoml), "serve", "kiln.serving.bento:KilnService", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    stack.callback(stop, process)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("bentoml serve exited before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("bentoml serve was not ready in 120 s")


def start_null(kiln_port: int, stack: ExitStack, model: str | None = None) -> int:
    """`null_server.py` beside this file, replaying kiln's answers for `model` (the one this
    run serves by default); returns its port."""
    command = [sys.executable, str(NULL_SERVER), str(kiln_port), "--model", model or MODEL]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stack.callback(stop, process)
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"null server ready: port (\d+)", line):
            return int(match.group(1))
    raise RuntimeError(f"{NULL_SERVER.name} exited before it was ready")


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import kiln.registry
    from kiln.serving.core import ServingCore
    from kiln.serving.repository import RegistryRepository
    from kiln.serving.settings import ServingSettings
    from kiln.settings import Settings
    from kiln_engines import EngineOptions

    home = args.home.resolve()
    ensure_model(home)
    threads = args.threads or max(1, (os.cpu_count() or 2) - 1)
    samples: list[Sample] = []
    load_before = os.getloadavg()
    with ExitStack() as stack:
        kiln_port, http_port = start_kiln(home, args, stack)
        kserve, bento = kserve_json(MODEL), bento_json()
        null_port = start_null(kiln_port, stack)
        bento_port = start_bento(home, args, stack) if args.bentoml else None
        registry = stack.enter_context(kiln.registry.open(settings=Settings(home=home)))
        core = ServingCore(
            RegistryRepository(registry, options=EngineOptions(intra_op_threads=threads)),
            ServingSettings(
                max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us
            ),
        )
        await core.start([MODEL])
        pa = args.perf_analyzer if args.perf_analyzer.exists() else None
        if pa is None:
            print(f"perf_analyzer not found at {args.perf_analyzer}: Python client only")
        perf_targets = (
            ("kiln", kiln_port, "grpc"), ("no-model", null_port, "grpc"),
            ("kiln-http", http_port, "http"),
        )  # fmt: skip
        for round_ in range(args.rounds):
            for c in args.concurrency:
                print(f"round {round_ + 1}/{args.rounds}, concurrency {c}", flush=True)
                for target, port in (("kiln", kiln_port), ("no-model", null_port)):
                    s = await grpc_client(port, MODEL, c, args.seconds, args.warmup)
                    s.target = target
                    samples.append(s)
                for target, port, protocol in perf_targets if pa is not None else ():
                    if p := perf_analyzer(pa, port, MODEL, c, args.seconds, protocol):
                        p.target = target
                        samples.append(p)
                samples.append(
                    await http_client(http_port, kserve, "kiln-http", c, args.seconds, args.warmup)
                )
                samples.append(await in_process(core, MODEL, c, args.seconds, args.warmup))
                if bento_port is not None:
                    bento_sample = http_client(
                        bento_port, bento, "bentoml", c, args.seconds, args.warmup
                    )
                    samples.append(await bento_sample)
        await core.stop()
    return {
        **header(args, load_before, threads),
        "samples": [asdict(s) for s in samples],
        "summary": summarise(samples),
    }


def header(
    args: argparse.Namespace, load_before: tuple[float, ...], threads: int
) -> dict[str, Any]:
    """Date, machine, load and settings of a run, for its JSON."""
    from kiln_engines import host_info

    host = host_info()
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{host.machine}, {host.cpu_count} cores ({host.cpu}), "
        f"{'GPU' if host.gpus else 'no GPU'}, Python {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "model": f"{args.model} ({MODEL})",
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "engine_threads": threads,
            "rounds": args.rounds,
            "seconds": args.seconds,
        },
    }


async def pinned(args: argparse.Namespace) -> dict[str, Any]:
    """`--pin`: see serving_pinned.py."""
    home = args.home.resolve()
    ensure_model(home)
    load_before = os.getloadavg()
    result = await run_pinned(args, MODEL, home)
    return {**header(args, load_before, 1), **result}


def summarise(samples: list[Sample]) -> list[dict[str, Any]]:
    keyed: dict[tuple[str, str, int], list[Sample]] = {}
    for s in samples:
        keyed.setdefault((s.client, s.target, s.concurrency), []).append(s)
    rows = []
    for (client, target, c), group in sorted(keyed.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        rows.append(
            {
                "concurrency": c,
                "client": client,
                "target": target,
                "throughput": statistics.median(s.throughput for s in group),
                "p50_us": statistics.median(s.p50_us for s in group),
                "p99_us": statistics.median(s.p99_us for s in group),
            }
        )

    def find(target: str, client: str, concurrency: int) -> dict[str, Any] | None:
        return next(
            (r for r in rows if (r["target"], r["client"], r["concurrency"])
             == (target, client, concurrency)),
            None,
        )  # fmt: skip

    for row in rows:
        c = row["concurrency"]
        # HTTP has no no-model twin here: compare with the gRPC ceiling of the same client
        # kind (Python asyncio) to show what the transport costs.
        grpc_client = "python" if row["client"] == "python-http" else row["client"]
        ceiling = find("no-model", grpc_client, c)
        row["throughput_vs_no_model"] = (
            row["throughput"] / ceiling["throughput"] if ceiling else None
        )
        row["p50_vs_no_model"] = row["p50_us"] / ceiling["p50_us"] if ceiling else None
        # kiln over HTTP against kiln over gRPC, same server, same kind of client.
        twin = find("kiln", grpc_client, c) if row["target"] == "kiln-http" else None
        row["http_vs_grpc"] = row["throughput"] / twin["throughput"] if twin else None
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['machine']}, {result['date']}; settings {result['settings']}")
    before, after = result["load_average_before"], result["load_average_after"]
    print(f"load average before {before}, after {after}")
    print(
        f"{'conc':>4}  {'client':<13} {'target':<10} {'infer/s':>8} {'p50 us':>8} {'p99 us':>8}"
        f"  {'tput vs no-model':>16} {'p50 vs no-model':>15} {'HTTP/gRPC':>9}"
    )
    for r in result["summary"]:
        ratio, p50, http = r["throughput_vs_no_model"], r["p50_vs_no_model"], r["http_vs_grpc"]
        print(
            f"{r['concurrency']:>4}  {r['client']:<13} {r['target']:<10} {r['throughput']:>8.0f} "
            f"{r['p50_us']:>8.0f} {r['p99_us']:>8.0f}  {ratio:>16.0%} {p50:>14.2f}x"
            f" {f'{http:.0%}' if http is not None else '':>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / ".bench" / "serving-home")
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="cnn",
        help="cnn: the trainer's CNN (~0.14 ms per image here); mlp: its MLP (~0.03 ms), "
        "which leaves the serving stack's own cost in plain view",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured per sample")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="engine threads; 0: cores - 1")
    parser.add_argument(
        "--perf-analyzer", type=Path, default=REPO / ".bench" / "perf_analyzer" / "perf_analyzer"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--pin", action="store_true",
        help="each server on one core, the Python client on another (serving_pinned.py)",
    )  # fmt: skip
    parser.add_argument("--cores", help="with --pin: SERVER:CLIENT cores (default: last:first)")
    parser.add_argument(
        "--no-mlserver", dest="mlserver", action="store_false",
        help="with --pin: skip MLServer even when benchmarks/setup_mlserver.sh has installed it",
    )  # fmt: skip
    parser.add_argument(
        "--no-bentoml", dest="bentoml", action="store_false",
        help="skip the BentoML HTTP service (bentoml serve kiln.serving.bento:KilnService)",
    )  # fmt: skip
    args = parser.parse_args()
    global MODEL, ARCH
    MODEL, ARCH = MODELS[args.model], args.model
    if args.pin:
        result = asyncio.run(pinned(args))
        print_pinned(result)
    else:
        result = asyncio.run(run(args))
        print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
