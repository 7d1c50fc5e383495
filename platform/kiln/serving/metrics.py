"""Prometheus metrics for serving, per model and version, in a registry of their own.

Each server gets its own `CollectorRegistry`, so several servers in one process (tests) do not
collide. The request path touches only pre-bound children (`VersionMetrics`), so recording a
request is a few attribute calls, not label lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Enum, Histogram, start_http_server

# 50 us .. 10 s: a small CNN answers in well under a millisecond; queues under load take longer.
_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STATES = ("loading", "ready", "unloading", "unloaded")


@dataclass(frozen=True, slots=True)
class VersionMetrics:
    """The children of every metric for one (model, version), bound once at load."""

    success: Counter
    request: Histogram
    queue: Histogram
    compute: Histogram
    batch: Histogram
    _failure: Counter
    _model: str
    _version: str

    def succeeded(self, total_s: float, queue_s: float) -> None:
        self.success.inc()
        self.request.observe(total_s)
        self.queue.observe(queue_s)

    def failed(self, code: str) -> None:
        self._failure.labels(self._model, self._version, code).inc()

    def executed(self, rows: int, compute_s: float) -> None:
        self.batch.observe(rows)
        self.compute.observe(compute_s)


class ServingMetrics:
    """Every serving metric, registered in `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "version")
        r = self.registry
        self._success = Counter(
            "kiln_inference_success", "Inference requests answered.", labels, registry=r
        )
        self._failure = Counter(
            "kiln_inference_failure",
            "Inference requests failed, by error code (model and version empty when the "
            "request named no served model).",
            (*labels, "code"),
            registry=r,
        )
        self._request = Histogram(
            "kiln_inference_request_duration_seconds",
            "Time from receiving a request to answering it.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._queue = Histogram(
            "kiln_inference_queue_duration_seconds",
            "Time a request waited in its model's queue.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._compute = Histogram(
            "kiln_inference_compute_duration_seconds",
            "Time one batch took to compute (inputs, engine, outputs).",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._batch = Histogram(
            "kiln_inference_batch_size",
            "Rows per engine execution.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self._state = Enum(
            "kiln_model_state", "Load state of a model version.", labels, states=list(STATES),
            registry=r,
        )  # fmt: skip

    def bind(self, model: str, version: int) -> VersionMetrics:
        """The metric children of one loaded version."""
        v = str(version)
        return VersionMetrics(
            success=self._success.labels(model, v),
            request=self._request.labels(model, v),
            queue=self._queue.labels(model, v),
            compute=self._compute.labels(model, v),
            batch=self._batch.labels(model, v),
            _failure=self._failure,
            _model=model,
            _version=v,
        )

    def failed_unresolved(self, code: str) -> None:
        """A request that failed before it reached a served model (unknown name, ...)."""
        self._failure.labels("", "", code).inc()

    def state(self, model: str, version: int, state: str) -> None:
        self._state.labels(model, str(version)).state(state)

    def serve(self, host: str, port: int) -> tuple[int, WSGIServer]:
        """Expose /metrics over HTTP on a daemon thread; returns the bound port and the server
        (call `.shutdown()` on it to stop)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port), server
