"""Kiln's trainer against a minimal hand-written PyTorch loop: same model, data, batch size.

The trainer adds a warm-up/cosine schedule, gradient clipping, metric accumulation, progress
reporting and a validation pass per epoch; this measures what those cost. Runs alternate
(hand, kiln, hand, kiln, ...) so that machine noise hits both alike; the table shows medians.

    python benchmarks/train_throughput.py [--dataset mnist-5k] [--model cnn] [--epochs 2]

`--nproc N` adds `kiln train` with 1 against N processes (DDP over gloo, through the real
CLI, so process start-up and rendezvous count): samples/s of rank 0's optimisation loop and
the command's wall time, with the cores the machine has. The threads are shared out, so on
few cores expect little gain: N processes split the same cores and add gradient all-reduces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from kiln.data import Dataset, load_dataset
from kiln.settings import Settings
from kiln.train import TrainConfig, build_model, train
from kiln.train.trainer import normalization_stats


def hand_written_loop(ds: Dataset, cfg: TrainConfig) -> float:
    """The loop a person writes first: shuffle, forward, loss, backward, step. Samples/s."""
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model, ds.input_shape, ds.num_classes, normalization=normalization_stats(ds.train.x)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    n = len(ds.train)
    model.train()
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if idx.numel() < 2:
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return n * cfg.epochs / (time.perf_counter() - start)


def kiln_trainer(ds: Dataset, cfg: TrainConfig, home: Path) -> tuple[float, float]:
    """Samples/s of the trainer's optimisation loop, and of whole epochs with validation."""
    result = train(cfg, Settings(home=home), dataset=ds, show_progress=False)
    samples = len(ds.train) * len(result.history)
    epoch_seconds = sum(r["seconds"] for r in result.history)
    return result.metrics["train_samples_per_s"], samples / epoch_seconds


def processes(args: argparse.Namespace, nproc: int) -> tuple[float, float]:
    """Rank 0's optimisation-loop samples/s and the wall seconds of `kiln train --nproc`."""
    kiln = Path(sys.executable).with_name("kiln")
    command = [
        str(kiln), "train", "--dataset", args.dataset, "--model", args.model,
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--patience", str(args.epochs + 1), "--no-progress", "--json", "--nproc", str(nproc),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        out = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, KILN_HOME=home),
        ).stdout
        wall = time.perf_counter() - started
    return float(json.loads(out)["metrics"]["train_samples_per_s"]), wall


def processes_table(args: argparse.Namespace) -> Table:
    runs: dict[int, list[tuple[float, float]]] = {1: [], args.nproc: []}
    for _ in range(args.repeats):
        for n, measured in runs.items():
            measured.append(processes(args, n))
    table = Table(
        title=f"kiln train: 1 vs {args.nproc} processes, {args.model} on {args.dataset}, "
        f"global batch {args.batch_size}, {os.cpu_count()} cores (medians of {args.repeats})"
    )
    for col in ("processes", "samples/s (loop)", "wall s (command)"):
        table.add_column(col, justify="right")
    for n, measured in runs.items():
        rate = statistics.median(m[0] for m in measured)
        wall = statistics.median(m[1] for m in measured)
        table.add_row(str(n), f"{rate:,.0f}", f"{wall:.1f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--nproc", type=int, default=0, help="also 1 vs N processes")
    args = parser.parse_args()

    settings = Settings()
    threads = args.threads or settings.thread_count()
    torch.set_num_threads(threads)
    ds = load_dataset(args.dataset, settings)
    # patience > epochs: every run trains the same number of epochs
    cfg = TrainConfig(
        dataset=args.dataset, model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, patience=args.epochs + 1, threads=threads,
    )  # fmt: skip
    hand, loop, epoch = [], [], []
    with tempfile.TemporaryDirectory() as home:
        hand_written_loop(ds, TrainConfig(model=args.model, epochs=1))  # warm-up
        for _ in range(args.repeats):
            hand.append(hand_written_loop(ds, cfg))
            a, b = kiln_trainer(ds, cfg, Path(home))
            loop.append(a)
            epoch.append(b)

    base = statistics.median(hand)
    table = Table(
        title=f"training throughput: {args.model} on {args.dataset}, batch {args.batch_size}, "
        f"{args.epochs} epochs x {args.repeats} runs, {threads} threads (medians)"
    )
    for col in ("loop", "samples/s", "ratio to hand-written"):
        table.add_column(col, justify="right" if col != "loop" else "left")
    table.add_row("hand-written PyTorch loop", f"{base:,.0f}", "1.00")
    table.add_row("kiln trainer (optimisation loop)", f"{statistics.median(loop):,.0f}",
                  f"{statistics.median(loop) / base:.2f}")  # fmt: skip
    table.add_row("kiln trainer (epochs incl. validation)", f"{statistics.median(epoch):,.0f}",
                  f"{statistics.median(epoch) / base:.2f}")  # fmt: skip
    console = Console()
    console.print(table)
    if args.nproc > 1:
        console.print(processes_table(args))
    console.print(
        f"machine: {platform.machine()}, {threads} threads, torch {torch.__version__}, "
        f"{datetime.now(UTC):%Y-%m-%d}"
    )


if __name__ == "__main__":
    main()
