"""Latency at batch 1 and throughput at the maximum batch, measured where the engine was built.

Numbers are for orientation and for comparing artifacts built on the same host; they go into
the artifact's report with the host they were measured on. Each measurement warms up first
and then runs for a fixed time budget rather than a fixed count, so a slow model does not make
`kiln compile` slow.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kiln_engines import Engine


@dataclass(frozen=True)
class Performance:
    threads: int
    latency_ms_p50: float
    latency_ms_p90: float
    max_batch: int
    throughput_per_s: float
    """Samples per second at `max_batch`."""
    sequence_lengths: tuple[int, int] | None = None
    """Tokens per row at batch 1 and at `max_batch`, for models that take sequences (text);
    None (and absent from the report) for fixed-shape inputs."""

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        if self.sequence_lengths is None:
            del found["sequence_lengths"]
        else:
            found["sequence_lengths"] = {
                "batch1": self.sequence_lengths[0],
                "max_batch": self.sequence_lengths[1],
            }
        return found


Batches = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
"""The inputs timed: one row (batch 1), and `max_batch` rows."""


def tiled(samples: Mapping[str, np.ndarray], max_batch: int) -> Batches:
    """The first row of `samples`, and rows of `samples` tiled up to `max_batch`."""
    one = {name: np.ascontiguousarray(a[:1]) for name, a in samples.items()}
    full = {}
    for name, a in samples.items():
        reps = -(-max_batch // a.shape[0])
        full[name] = np.ascontiguousarray(np.concatenate([a] * reps)[:max_batch])
    return one, full


def time_calls(engine: Engine, inputs: Mapping[str, np.ndarray], budget_s: float) -> list[float]:
    """Seconds per `engine.infer(inputs)` call: 3 warm-up calls, then at least 5 timed calls
    and as many as fit in `budget_s`."""
    for _ in range(3):
        engine.infer(inputs)
    times = []
    deadline = time.perf_counter() + budget_s
    while True:
        start = time.perf_counter()
        engine.infer(inputs)
        end = time.perf_counter()
        times.append(end - start)
        if end > deadline and len(times) >= 5:
            return times


def measure(
    engine: Engine,
    batches: Batches,
    *,
    threads: int,
    budget_s: float = 1.0,
    sequence_axis: int | None = None,
) -> Performance:
    """Measure `engine` on `batches` (`tiled`, or for text `kiln.compile.text.timing_batches`);
    `sequence_axis` names the inputs' sequence axis, whose lengths the result then reports."""
    one, full = batches
    first = next(iter(one))
    lengths = None
    if sequence_axis is not None:
        lengths = (int(one[first].shape[sequence_axis]), int(full[first].shape[sequence_axis]))
    max_batch = int(full[first].shape[0])
    latency = np.asarray(time_calls(engine, one, budget_s / 2)) * 1e3
    batched = time_calls(engine, full, budget_s / 2)
    return Performance(
        threads=threads,
        latency_ms_p50=round(float(np.percentile(latency, 50)), 4),
        latency_ms_p90=round(float(np.percentile(latency, 90)), 4),
        max_batch=max_batch,
        throughput_per_s=round(max_batch / float(np.median(batched)), 1),
        sequence_lengths=lengths,
    )
