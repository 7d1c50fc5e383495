"""Cumulative per-version inference statistics, with the fields and meaning of Triton's
`ModelStatistics` (what `perf_analyzer` and `tritonclient.get_inference_statistics` read).

Updated and read on the event loop thread only, so no locks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kiln.serving.messages import Timings


@dataclass(slots=True)
class Duration:
    """A count of events and their cumulative duration."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStatistics:
    """Executions of one batch size: how many, and their compute durations."""

    batch_size: int
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStatistics:
    """Everything counted for one loaded (model, version) since it was loaded."""

    name: str
    version: int
    last_inference_ms: int = 0
    """Milliseconds since the epoch of the last execution; 0 before the first."""
    inference_count: int = 0
    """Rows inferred: a batch of N rows counts N."""
    execution_count: int = 0
    """Engine executions: a batch counts once."""
    success: Duration = field(default_factory=Duration)
    """Successful requests and their total time in the server."""
    fail: Duration = field(default_factory=Duration)
    """Failed requests and their total time in the server."""
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStatistics] = field(default_factory=dict)
    """By batch size (rows)."""

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One engine execution over `rows` rows."""
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        stats = self.batches.get(rows)
        if stats is None:
            stats = self.batches[rows] = BatchStatistics(rows)
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)
        stats.compute_output.add(output_ns)

    def record_success(self, total_ns: int, timings: Timings) -> None:
        """One request answered; its compute durations are its batch's."""
        # Inlined Duration.add: this runs for every request.
        success, queue = self.success, self.queue
        success.count += 1
        success.ns += total_ns
        queue.count += 1
        queue.ns += timings.queue_ns
        self.compute_input.add(timings.compute_input_ns)
        self.compute_infer.add(timings.compute_infer_ns)
        self.compute_output.add(timings.compute_output_ns)

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
