"""Text serving benchmark: strings in (server-side tokenisation) vs pre-tokenised INT64 in.

    python benchmarks/text_serving.py                      # concurrency 1, 8, 32; prints a table
    python benchmarks/text_serving.py --rounds 3 --seconds 4 --json .bench/text-serving.json

One `kiln serve` subprocess (exactly as users run it, traffic log off) serves a text model
trained by Kiln's trainer on rotten-tomatoes and compiled for onnxruntime; it is trained and
compiled into --home on first use. The server is pinned to one core and this load generator
to the other (`os.sched_setaffinity`: the server inherits core 1, then this process moves to
core 0 before it opens a channel), so the two do not fight for a core and runs repeat.

Two request kinds, side by side at each concurrency, interleaved round by round (median of
the rounds reported):
  strings      one review per request as a BYTES `text` tensor [1]: the server tokenises it
               with the version's tokenizer on its batcher's worker thread;
  pre-tokenised the same review's `input_ids` and `attention_mask` INT64 [1, L], tokenised
               here in advance with the same tokenizer (so the model computes the same).
Reviews cycle through the test split (a tokenizer's word cache would flatter one repeated
string). The client is grpc.aio with prebuilt requests, N tasks. Goal: strings cost at most
20% of the pre-tokenised throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL = "reviews"
KINDS = ("strings", "pre-tokenised")
GOAL = 0.20
"""Strings may cost at most this share of the pre-tokenised throughput."""
SERVER_CORE, CLIENT_CORE = 1, 0


@dataclass
class Sample:
    kind: str
    concurrency: int
    throughput: float
    p50_us: float
    p99_us: float


def ensure_model(home: Path, args: argparse.Namespace) -> None:
    """Train, compile and promote the text model into `home` unless it is there.

    The trainer's default architecture on the first --train-rows reviews for one epoch: its
    weights matter little here, its compute per token does (a full epoch on all 10,000
    reviews took over 15 minutes on a busy 2-core host).
    """
    import dataclasses
    import hashlib

    import kiln.registry
    from kiln.compile import CompileOptions, compile_version
    from kiln.data import Split, load_dataset
    from kiln.settings import Settings
    from kiln.train import TrainConfig, register_result, train

    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        if MODEL in {m.name for m in registry.list_models()}:
            return
        print(f"preparing {MODEL} in {home}: a {args.model} on {args.train_rows} rotten-tomatoes "
              "reviews, 1 epoch, compiled for onnxruntime")  # fmt: skip
        data = load_dataset("rotten-tomatoes", settings)
        rows = args.train_rows
        data = dataclasses.replace(
            data,
            train=Split(data.train.x[:rows], data.train.y[:rows]),
            val=Split(data.val.x[: rows // 4], data.val.y[: rows // 4]),
            fingerprint=hashlib.sha256(f"{data.fingerprint}:first-{rows}".encode()).hexdigest(),
        )
        config = TrainConfig.for_task(
            "classification", "text", dataset="rotten-tomatoes", model=args.model, epochs=1
        )
        result = train(config, settings, dataset=data, show_progress=False)
        version = register_result(registry, MODEL, result)
        compile_version(registry, version.ref, CompileOptions(measure_seconds=0.0), settings)
        registry.promote(version.ref, "production", gates=[], reason="text serving benchmark")


def requests(home: Path, count: int) -> dict[str, list[Any]]:
    """Prebuilt ModelInferRequests of both kinds for the first `count` test reviews."""
    from tritonclient.grpc import service_pb2

    import kiln.registry
    from kiln.data import load_dataset
    from kiln.serving.codec import encode_bytes
    from kiln.settings import Settings
    from kiln.text import TextTokenizer

    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        version = registry.resolve(f"{MODEL}@production")
        artifact = registry.artifacts(MODEL, version.version, "tokenizer")[0]
        tokenizer = TextTokenizer.from_file(registry.artifact_file(artifact))
    texts = [str(t) for t in load_dataset("rotten-tomatoes", settings).test.x[:count]]
    built: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for text in texts:
        strings = service_pb2.ModelInferRequest(model_name=MODEL)
        strings.inputs.add(name="text", datatype="BYTES", shape=[1])
        strings.raw_input_contents.append(encode_bytes([text]))
        built["strings"].append(strings)
        tokens = service_pb2.ModelInferRequest(model_name=MODEL)
        for name, array in tokenizer.encode([text]).inputs().items():
            tokens.inputs.add(name=name, datatype="INT64", shape=list(array.shape))
            tokens.raw_input_contents.append(array.tobytes())
        built["pre-tokenised"].append(tokens)
    return built


async def measure(
    port: int, kind: str, prebuilt: list[Any], concurrency: int, seconds: float, warmup: float
) -> Sample:
    from tritonclient.grpc import service_pb2_grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        started = time.perf_counter()
        measure_from, measure_to = started + warmup, started + warmup + seconds

        async def worker(offset: int) -> None:
            i = offset
            while (now := time.perf_counter()) < measure_to:
                await stub.ModelInfer(prebuilt[i % len(prebuilt)])
                i += 1
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)

        await asyncio.gather(*(worker(w * 7) for w in range(concurrency)))
    ordered = np.sort(np.asarray(latencies)) * 1e6
    return Sample(
        kind,
        concurrency,
        len(ordered) / seconds,
        float(np.percentile(ordered, 50)),
        float(np.percentile(ordered, 99)),
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from kiln.serving.launcher import kiln_serve
    from kiln_engines import host_info

    home = args.home.resolve()
    ensure_model(home, args)
    prebuilt = requests(home, args.texts)
    samples: list[Sample] = []
    host = host_info()  # before pinning: it counts the cores this process may use
    load_before = os.getloadavg()
    pinned = hasattr(os, "sched_setaffinity") and {0, 1} <= os.sched_getaffinity(0)
    with ExitStack() as stack:
        if pinned:
            os.sched_setaffinity(0, {SERVER_CORE})  # the server inherits this core
        flags = [MODEL, "--no-traffic-log", "--max-batch-size", str(args.max_batch_size)]
        served = stack.enter_context(kiln_serve(*flags, "--threads", "1", home=home, metrics=False))
        if pinned:
            os.sched_setaffinity(0, {CLIENT_CORE})
        for round_ in range(args.rounds):
            for c in args.concurrency:
                print(f"round {round_ + 1}/{args.rounds}, concurrency {c}", flush=True)
                for kind in KINDS:
                    sample = await measure(
                        served.port, kind, prebuilt[kind], c, args.seconds, args.warmup
                    )
                    samples.append(sample)
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{host.machine}, {host.cpu_count} cores ({host.cpu}), "
        f"{'GPU' if host.gpus else 'no GPU'}, Python {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "model": f"{args.model} trained on rotten-tomatoes, onnxruntime, 1 engine thread",
            "pinned": f"server core {SERVER_CORE}, client core {CLIENT_CORE}" if pinned else "no",
            "max_batch_size": args.max_batch_size,
            "texts": len(prebuilt["strings"]),
            "rounds": args.rounds,
            "seconds": args.seconds,
        },
        "samples": [asdict(s) for s in samples],
        "summary": summarise(samples),
    }


def summarise(samples: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    for c in sorted({s.concurrency for s in samples}):
        medians = {}
        for kind in KINDS:
            group = [s for s in samples if s.kind == kind and s.concurrency == c]
            medians[kind] = {
                "throughput": statistics.median(s.throughput for s in group),
                "p50_us": statistics.median(s.p50_us for s in group),
                "p99_us": statistics.median(s.p99_us for s in group),
            }
        cost = 1 - medians["strings"]["throughput"] / medians["pre-tokenised"]["throughput"]
        rows.append({"concurrency": c, **medians, "strings_cost": cost, "goal_met": cost <= GOAL})
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['machine']}, {result['date']}; settings {result['settings']}")
    print(f"load average before {result['load_average_before']}, after "
          f"{result['load_average_after']}")  # fmt: skip
    print(
        f"{'conc':>4}  {'strings/s':>9} {'p50 us':>7} {'p99 us':>7}  {'tokens/s':>9} "
        f"{'p50 us':>7} {'p99 us':>7}  {'strings cost':>12}  goal <= {GOAL:.0%}"
    )
    for r in result["summary"]:
        s, t = r["strings"], r["pre-tokenised"]
        print(
            f"{r['concurrency']:>4}  {s['throughput']:>9.0f} {s['p50_us']:>7.0f} "
            f"{s['p99_us']:>7.0f}  {t['throughput']:>9.0f} {t['p50_us']:>7.0f} "
            f"{t['p99_us']:>7.0f}  {r['strings_cost']:>12.1%}  "
            f"{'met' if r['goal_met'] else 'missed'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / ".bench" / "text-serving-home")
    parser.add_argument("--model", choices=["transformer", "gru"], default="transformer")
    parser.add_argument("--train-rows", type=int, default=2000, help="reviews trained on")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured per sample")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--texts", type=int, default=512, help="distinct reviews cycled")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
