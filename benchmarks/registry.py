"""The registry's hot paths: alias resolution (the server polls it) and listing big models.

Builds a fresh registry in a temporary KILN_HOME through the public API only:

- ``digits``: `--versions` versions (default 500: a model retrained daily for over a year),
  every 5th promoted to production, a few other aliases; each version's config carries a
  ~30 KB data profile, as `kiln train` records;
- ``big``: `--big` versions (default 10,000), for listing.

Then it times, per call with `time.perf_counter_ns` after a warm-up: following
``digits@production`` to its number (`version_of`, what a server polls), resolving
``digits@production``, ``digits`` and ``digits:N``, resolving on ``big``; listing ``big``'s
versions, its artifacts, all models; the alias history; one registration. Prints a table.

    python benchmarks/registry.py [--versions 500] [--big 10000] [--calls 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

import kiln.registry
from kiln.registry import Lineage, Registry
from kiln.settings import Settings


def timings(call: Callable[[], object], n: int, warmup: int) -> list[float]:
    """Seconds per call, `n` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e9)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def data_profile() -> dict[str, object]:
    """Shaped like the drift reference `kiln train` stores in each version's config (~30 KB)."""
    rng = random.Random(0)
    pixels = 784
    return {
        "input": {
            "mean": [round(rng.random(), 6) for _ in range(pixels)],
            "std": [round(rng.random(), 6) for _ in range(pixels)],
            "quantiles": [[round(rng.random(), 4) for _ in range(5)] for _ in range(256)],
        },
        "prediction": {"class_frequencies": [round(rng.random(), 6) for _ in range(10)]},
    }


def populate(registry: Registry, name: str, count: int, work: Path, promote_every: int) -> float:
    """Register `count` versions (4 KiB checkpoint, ~30 KB config each); seconds per one."""
    checkpoint = work / f"{name}.safetensors"
    profile = data_profile()
    start = time.perf_counter()
    for i in range(1, count + 1):
        checkpoint.write_bytes(os.urandom(4096))
        version = registry.register_version(
            name,
            checkpoint=checkpoint,
            config={"model": "cnn", "epochs": 8, "seed": i, "reference": profile},
            metrics={"test_accuracy": 0.95 + (i % 7) / 1000, "test_loss": 0.15, "ece": 0.02},
            lineage=Lineage(
                dataset="mnist-5k", data_fingerprint=f"sha256:{i:064x}", run_id=f"r{i}"
            ),
            description=f"nightly retrain {i}",
        )
        if promote_every and i % promote_every == 0:
            registry.promote(version.ref, reason="nightly", force=True)
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=500, help="versions of 'digits'")
    parser.add_argument("--big", type=int, default=10_000, help="versions of 'big'")
    parser.add_argument("--calls", type=int, default=20_000, help="timed resolutions per row")
    parser.add_argument("--lists", type=int, default=20, help="timed listings per row")
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="kiln-bench-registry-") as tmp:
        work = Path(tmp)
        registry = kiln.registry.open(settings=Settings(home=work / "home"))
        console.print(f"populating digits ({args.versions}) and big ({args.big}) …", style="dim")
        register_s = populate(registry, "digits", args.versions, work, promote_every=5)
        for alias, fraction in (("candidate", 1.0), ("canary", 0.9), ("staging", 0.5)):
            registry.promote(f"digits:{max(1, int(args.versions * fraction))}", alias, force=True)
        big_register_s = populate(registry, "big", args.big, work, promote_every=0)
        registry.promote(f"big:{args.big}", force=True)
        middle = max(1, args.versions // 2)

        n, lists = args.calls, args.lists
        history_n = len(registry.history("digits"))
        plan: list[tuple[str, Callable[[], object], int, int]] = [
            (
                "version_of digits@production",
                lambda: registry.version_of("digits@production"),
                n,
                500,
            ),
            ("resolve digits@production", lambda: registry.resolve("digits@production"), n, 500),
            ("resolve digits (= @production)", lambda: registry.resolve("digits"), n, 500),
            (f"resolve digits:{middle}", lambda: registry.resolve(f"digits:{middle}"), n, 500),
            ("resolve big@production", lambda: registry.resolve("big@production"), n, 500),
            (f"list_versions big ({args.big})", lambda: registry.list_versions("big"), lists, 2),
            (
                "list_versions big, newest 20",
                lambda: registry.list_versions("big", limit=20),
                200,
                10,
            ),
            ("get_model big", lambda: registry.get_model("big"), 200, 10),
            ("model_artifacts big", lambda: registry.model_artifacts("big"), lists, 2),
            ("list_models", registry.list_models, 200, 10),
            (f"history digits ({history_n} moves)", lambda: registry.history("digits"), 200, 10),
        ]
        rows = [(label, timings(call, calls, warmup)) for label, call, calls, warmup in plan]
        registry.close()

    table = Table(title="kiln registry (SQLite WAL, one process)")
    for column in ("operation", "calls", "p50", "p99", "mean"):
        table.add_column(column, justify="right" if column != "operation" else "left")
    for label, values in rows:
        table.add_row(
            label,
            str(len(values)),
            _fmt(statistics.median(values)),
            _fmt(percentile(values, 0.99)),
            _fmt(statistics.fmean(values)),
        )
    table.add_row(
        "register_version (digits, +promote every 5th)",
        str(args.versions),
        "",
        "",
        _fmt(register_s),
    )
    table.add_row("register_version (big)", str(args.big), "", "", _fmt(big_register_s))
    console.print(table)
    console.print(
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}, "
        f"{datetime.now(UTC):%Y-%m-%d}"
    )


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
