"""What traffic logging costs, and how `kiln evaluate` scales with the size of the log.

(a) Logging overhead.
    - hook: the per-request cost of `TrafficSink.on_request` (what the serving core calls on
      its event loop) with the writer thread running, against an empty hook.
    - serve: requests/s of `kiln serve` (subprocess, 1 engine thread) at concurrency 32 with
      the traffic log on (the default) and off (`--no-traffic-log`), side by side (runs
      alternate off/on; medians), and the server's CPU time per request. The model is a small
      linear ONNX classifier (1x28x28 -> 10), so the engine is cheap and the relative cost
      of logging is at its largest. Client and server share this machine's cores.
(b) `kiln evaluate` (the real CLI, a fresh process each) over synthetic logs of 1M, 5M and
    10M requests: wall time and peak RSS. The logs look like production: 10,000-row part
    files as the logger writes them, two versions (primary 90% / canary 10%), real MNIST
    inputs on 1% of rows (`KILN_TRAFFIC_INPUT_SAMPLE_RATE=0.01`), scores on every row,
    ground truth for 10% of requests. Generated once under /tmp/kiln-bench-traffic (never in
    the repository) and reused by later runs; delete it when done.

    python benchmarks/traffic.py [--sizes 1,5,10] [--serve-seconds 6] [--rounds 6] [--skip-serve]

    Single on/off runs on a 2-core machine vary by +-5%; compare the medians of several
    alternating rounds (the default 6 takes about 2.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from rich.console import Console
from rich.table import Table

import kiln.registry
from kiln.data import load_dataset
from kiln.data.profile import reference_profile
from kiln.serving.launcher import kiln_serve
from kiln.serving.messages import InferRequest, InferResponse, Timings, TrafficEvent
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import FEEDBACK_SCHEMA_V1, TRAFFIC_SCHEMA_V1, TrafficSettings
from kiln.traffic.layout import write_part

KILN = Path(sys.executable).with_name("kiln")
ROWS_PER_FILE = 10_000
console = Console(width=150)


# -- (a) logging overhead ------------------------------------------------------------------------


def hook_cost(n: int = 200_000) -> dict[str, float]:
    """Microseconds per on_request call, writer running, vs an empty hook."""
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    logits = np.arange(10, dtype=np.float32)[None]
    events = [
        TrafficEvent(
            InferRequest("digits", {"input": x}, id=f"r{i}"),
            InferResponse("digits", "1", f"r{i}", {"logits": logits}),
            None,
            Timings(1000, 100, 200, 100, 8),
            300_000,
            1,
        )
        for i in range(n)
    ]
    results = {}
    with tempfile.TemporaryDirectory(dir="/tmp") as home:
        sink = TrafficSink(Path(home), TrafficSettings(max_buffered_rows=n + 1))
        for label, hook in (("empty", lambda e: None), ("logging", sink.on_request)):
            start = time.perf_counter()
            for event in events:
                hook(event)
            results[label] = (time.perf_counter() - start) / n * 1e6
        start = time.perf_counter()
        sink.close(600)
        results["drain_s"] = time.perf_counter() - start
        results["dropped"] = sink.logger.stats.dropped
    return results


def linear_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["logits"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(
                (rng.standard_normal((784, 10)) * 0.05).astype(np.float32), "W"
            ),
            numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "B"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(port: int, seconds: float, concurrency: int = 32) -> tuple[float, int]:
    """Requests/s over `seconds` at `concurrency`, and requests sent in all (warm-up too)."""
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import InferInput

    x = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    client = aio.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = InferInput("input", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(50):  # warm up
        await client.infer("bench", [tensor])
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.infer("bench", [tensor])
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return done / elapsed, done + 50


MODES = {
    "off": (["--no-traffic-log"], {}),
    "on": ([], {}),
    "on, inputs 10%": ([], {"KILN_TRAFFIC_INPUT_SAMPLE_RATE": "0.1"}),
}
"""kiln serve flags and environment per mode: log off, on (the default: every input), and on
with one input in ten logged (everything else about every request still logged)."""


def serve_throughput(seconds: float, rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-serve-", dir="/tmp"))
    home = root / "home"
    checkpoint = root / "ckpt.safetensors"
    checkpoint.write_bytes(b"benchmark")
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        v = registry.register_version("bench", checkpoint=checkpoint, config={}, metrics={})
        registry.add_artifact("bench", v.version, kind="onnx", path=linear_onnx(root / "m.onnx"))
        registry.promote(v.ref, "production", gates=[], reason="benchmark")
    rps: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu_us: dict[str, list[float]] = {mode: [] for mode in MODES}
    sent_with_logging = 0
    for _ in range(rounds):
        for mode, (flags, env) in MODES.items():
            # The exited server's own CPU time counts (the SIGTERM drain and, with logging,
            # writing what was still buffered are part of the cost): the children's usage
            # grows by exactly the server's once it is reaped, the only child that ends here.
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            args = ("--threads", "1", "--models", "bench", *flags)
            with kiln_serve(*args, home=home, env=env, metrics=False) as server:
                cpu_ready = process_cpu(server.process.pid)
                throughput, sent = asyncio.run(load(server.port, seconds))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rps[mode].append(throughput)
            sent_with_logging += sent if not flags else 0
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            cpu_us[mode].append((cpu - cpu_ready) / sent * 1e6)
    log = home / "traffic"
    written = pl.scan_parquet(log / "**" / "*.parquet").select(pl.len()).collect().item()
    shutil.rmtree(root)
    return {
        "rps": {m: statistics.median(r) for m, r in rps.items()},
        "cpu_us": {m: statistics.median(c) for m, c in cpu_us.items()},
        "runs": rps,
        "rows_written": written,
        "sent_with_logging": sent_with_logging,
    }


# -- (b) kiln evaluate over large logs -----------------------------------------------------------


def _list_array(values: np.ndarray, present: np.ndarray) -> pa.Array:
    """A List(Float32) column: rows of `values` where `present`, null elsewhere."""
    width = values.shape[1]
    counts = np.where(present, width, 0)
    offsets = np.zeros(len(present) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = values[present].ravel().astype(np.float32)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=pa.array(~present))


def generate(home: Path, rows: int, images: np.ndarray, now: datetime) -> float:
    """Write `rows` logged requests (and 10% feedback) as the logger would; seconds taken."""
    started = time.perf_counter()
    rng = np.random.default_rng(rows)
    logits_pool = rng.standard_normal((50_000, 10)).astype(np.float32) * 3
    traffic = home / "traffic" / "model=digits"
    feedback_ids: list[np.ndarray] = []
    feedback_labels: list[np.ndarray] = []
    span_us = int(timedelta(hours=23).total_seconds() * 1e6)
    start_us = int((now - timedelta(hours=23, minutes=30)).timestamp() * 1e6)
    for f, first in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - first)
        ts = np.sort(start_us + (first + np.arange(n)) * (span_us // rows))
        canary = rng.random(n) < 0.1
        scores = logits_pool[rng.integers(0, len(logits_pool), n)]
        pred = scores.argmax(axis=1)
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        conf = (1.0 / exp.sum(axis=1)).astype(np.float32)
        with_input = rng.random(n) < 0.01
        picked = images[rng.integers(0, len(images), n)]
        ok = rng.random(n) > 0.001
        ids = np.char.add(f"{rows:x}-{f:05d}-", np.arange(n).astype(str))
        frame = pl.DataFrame(
            {
                "request_id": ids,
                "timestamp": ts,
                "model": np.full(n, "digits"),
                "version": np.where(canary, 2, 1),
                "route": np.where(canary, "canary", "primary"),
                "transport": np.full(n, "grpc"),
                "input": pl.Series(_list_array(picked.reshape(n, -1), with_input)),
                "input_shape": [[1, 1, 28, 28] if w else None for w in with_input],
                "output_shape": [[1, 10]] * n,
                "scores": pl.Series(_list_array(scores, np.ones(n, dtype=bool))),
                "prediction": np.where(ok, pred, -1),
                "confidence": conf,
                "latency_us": rng.gamma(4.0, 120.0, n).astype(np.int64) + 150,
                "queue_us": rng.gamma(2.0, 40.0, n).astype(np.int64),
                "batch_size": rng.integers(1, 33, n),
                "status": np.where(ok, "ok", "unavailable"),
                "error": [None if o else "the model is loading" for o in ok],
            }
        ).with_columns(
            pl.from_epoch("timestamp", time_unit="us").dt.replace_time_zone("UTC"),
            pl.when(pl.col("status") == "ok").then(pl.col("prediction")).alias("prediction"),
        )
        frame = frame.cast(dict(TRAFFIC_SCHEMA_V1))  # type: ignore[arg-type]
        day = datetime.fromtimestamp(ts[0] / 1e6, UTC).date().isoformat()
        write_part(traffic / f"date={day}", frame)  # as servers write it: page checksums
        labelled = rng.random(n) < 0.1
        right = rng.random(n) < 0.93
        labels = np.where(right, pred, rng.integers(0, 10, n))
        feedback_ids.append(ids[labelled])
        feedback_labels.append(labels[labelled])
    ids = np.concatenate(feedback_ids)
    fb = pl.DataFrame(
        {
            "request_id": ids,
            "label": np.concatenate(feedback_labels).astype(np.int64),
            "received_at": np.full(len(ids), int(now.timestamp() * 1e6) - 1),
            "source": np.full(len(ids), "file:labels.csv"),
            "model": np.full(len(ids), "digits"),
        }
    ).with_columns(pl.from_epoch("received_at", time_unit="us").dt.replace_time_zone("UTC"))
    labels = fb.cast(dict(FEEDBACK_SCHEMA_V1))  # type: ignore[arg-type]
    write_part(home / "feedback" / f"date={now.date().isoformat()}", labels)
    return time.perf_counter() - started


def register_reference(home: Path) -> np.ndarray:
    """Versions 1 and 2 of 'digits' with mnist-5k's reference profile; returns the images."""
    ds = load_dataset("mnist-5k", Settings())
    logits = np.random.default_rng(0).standard_normal((len(ds.test), 10)) * 3
    profile = reference_profile(ds.train.x, ds.input_shape, logits)
    checkpoint = home.parent / "ckpt.safetensors"
    checkpoint.write_bytes(b"benchmark")
    config = {"class_names": list(ds.class_names), "reference": profile}
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        for _ in range(2):
            registry.register_version("digits", checkpoint=checkpoint, config=config, metrics={})
    return ds.test.x


MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "elapsed = time.perf_counter() - t\n"
    "assert p.returncode == 0, p.stderr[-3000:]\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(elapsed, r.ru_maxrss, r.ru_utime + r.ru_stime)\n"
    "sys.stderr.write(p.stdout)\n"
)


def timed(args: list[str], home: Path) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS (MiB), CPU seconds and stdout of a fresh `args` process."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KILN_HOME": str(home)},
        check=True,
    )
    elapsed, rss_kib, cpu = result.stdout.split()
    return float(elapsed), int(rss_kib) / 1024, float(cpu), result.stderr


def dataset(workdir: Path, millions: int) -> Path:
    """KILN_HOME holding a synthetic log of `millions` M requests (generated once, reused)."""
    home = workdir / f"{millions}M" / "home"
    if (home / ".complete").is_file():
        return home
    shutil.rmtree(home.parent, ignore_errors=True)
    home.mkdir(parents=True)
    images = register_reference(home)
    gen_s = generate(home, millions * 1_000_000, images, datetime.now(UTC))
    (home / ".complete").write_text(datetime.now(UTC).isoformat())
    console.print(f"{millions}M rows generated in {gen_s:.0f} s under {home}")
    return home


def evaluate_scaling(sizes: list[int], workdir: Path) -> list[dict[str, Any]]:
    results = []
    for millions in sizes:
        home = dataset(workdir, millions)
        size = sum(p.stat().st_size for p in (home / "traffic").rglob("*.parquet"))
        # The data was generated for "the last 24 hours" as of its creation: widen the window
        # by the data's age so every row counts however long ago it was generated.
        made = datetime.fromisoformat((home / ".complete").read_text())
        since = f"{24 + (datetime.now(UTC) - made).total_seconds() / 3600:.3f}h"
        eval_s, eval_rss, eval_cpu, out = timed(
            [str(KILN), "evaluate", "digits", "--since", since, "--json"], home
        )
        report = json.loads(out)
        assert report["requests"] == millions * 1_000_000, report["requests"]
        stats_s, stats_rss, stats_cpu, _ = timed(
            [str(KILN), "traffic", "stats", "digits", "--since", since, "--json"], home
        )
        results.append(
            {
                "rows": report["requests"],
                "files": report["files"],
                "mib_on_disk": size / 2**20,
                "evaluate_s": eval_s,
                "evaluate_cpu_s": eval_cpu,
                "evaluate_peak_rss_mib": eval_rss,
                "stats_s": stats_s,
                "stats_cpu_s": stats_cpu,
                "stats_peak_rss_mib": stats_rss,
                "labelled": report["labelled"],
                "input_samples": report["drift"]["versions"][0]["inputs"]["samples"],
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,10", help="Millions of rows for (b).")
    parser.add_argument("--serve-seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/kiln-bench-traffic"),
        help="Where the synthetic logs live (kept for reruns; delete it when done).",
    )
    args = parser.parse_args()
    console.print(
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"polars {pl.__version__}, {datetime.now(UTC):%Y-%m-%d}, "
        f"load average {os.getloadavg()[0]:.1f} (other processes share these cores)"
    )

    hook = hook_cost()
    table = Table(title="(a) per-request hook cost (in-process, writer thread running)")
    for col in ("empty hook", "TrafficSink.on_request", "writer drain after", "dropped"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{hook['empty']:.2f} µs", f"{hook['logging']:.2f} µs", f"{hook['drain_s']:.1f} s",
        str(int(hook["dropped"])),
    )  # fmt: skip
    console.print(table)

    if not args.skip_serve:
        serve = serve_throughput(args.serve_seconds, args.rounds)
        table = Table(title="(a) kiln serve, concurrency 32, linear 784->10 ONNX, 1 engine thread")
        for col in ("traffic log", "req/s (median)", "vs off", "server CPU/request", "off / this",
                    "runs (req/s)"):  # fmt: skip
            table.add_column(col, justify="right")
        for mode in MODES:
            table.add_row(
                mode, f"{serve['rps'][mode]:.0f}",
                f"{serve['rps'][mode] / serve['rps']['off']:.3f}",
                f"{serve['cpu_us'][mode]:.0f} µs",
                f"{serve['cpu_us']['off'] / serve['cpu_us'][mode]:.3f}",
                " ".join(f"{r:.0f}" for r in serve["runs"][mode]),
            )  # fmt: skip
        console.print(table)
        console.print(
            f"rows in the traffic log: {serve['rows_written']}, requests answered with logging "
            f"on: {serve['sent_with_logging']}"
        )

    if not args.skip_evaluate:
        sizes = [int(s) for s in args.sizes.split(",")]
        table = Table(title="(b) kiln evaluate / kiln traffic stats over the log, --since 24h")
        columns = ("rows", "files", "on disk", "evaluate", "(CPU)", "peak RSS", "traffic stats",
                   "(CPU)", "peak RSS", "labelled", "inputs examined")  # fmt: skip
        for col in columns:
            table.add_column(col, justify="right")
        for r in evaluate_scaling(sizes, args.workdir):
            table.add_row(
                f"{r['rows']:,}", str(r["files"]), f"{r['mib_on_disk']:.0f} MiB",
                f"{r['evaluate_s']:.1f} s", f"{r['evaluate_cpu_s']:.1f} s",
                f"{r['evaluate_peak_rss_mib']:.0f} MiB", f"{r['stats_s']:.1f} s",
                f"{r['stats_cpu_s']:.1f} s", f"{r['stats_peak_rss_mib']:.0f} MiB",
                f"{r['labelled']:,}", f"{r['input_samples']:,}",
            )  # fmt: skip
        console.print(table)


if __name__ == "__main__":
    main()
