"""Prometheus metrics for serving, per model and version, in a registry of their own.

Each server gets its own `CollectorRegistry`, so several servers in one process (tests) do not
collide. Recording is on the request path, so it is plain arithmetic on numbers owned by the
event loop (a counter increment, a bisect into histogram buckets: about a microsecond per
request, where prometheus_client's locked metric objects took about ten); the exposition is
built from those numbers when Prometheus scrapes, on the metrics server's thread. A scrape may
see one request counted in a histogram's count but not yet in its sum: harmless for metrics.
"""

from __future__ import annotations

import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# 50 us .. 10 s: a small CNN answers in well under a millisecond; queues under load take longer.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
STATES = ("loading", "ready", "unloading", "unloaded")


@dataclass(slots=True)
class Histogram:
    """Bucket counts (the last is +Inf) and the sum of observations; written by one thread."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def exposition(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) buckets as Prometheus wants them, and the sum."""
        counts, total = list(self.counts), self.total
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets, total


@dataclass(slots=True)
class VersionMetrics:
    """Everything measured for one (model, version)."""

    model: str
    version: str
    success: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    request: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    compute: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    batch: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    shadow: dict[str, int] = field(default_factory=dict)
    """Shadow copies this version was sent, by outcome (answered, failed, refused)."""

    def succeeded(self, total_s: float, queue_s: float) -> None:
        self.success += 1
        self.request.observe(total_s)
        self.queue.observe(queue_s)

    def failed(self, code: str) -> None:
        self.failures[code] = self.failures.get(code, 0) + 1

    def shadowed(self, outcome: str) -> None:
        self.shadow[outcome] = self.shadow.get(outcome, 0) + 1

    def executed(self, rows: int, compute_s: float) -> None:
        self.batch.observe(rows)
        self.compute.observe(compute_s)


class ServingMetrics(Collector):
    """Every serving metric, exposed through `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._versions: dict[tuple[str, str], VersionMetrics] = {}
        self._unresolved = VersionMetrics("", "")
        self._states: dict[tuple[str, str], str] = {}
        self.registry.register(self)

    def bind(self, model: str, version: int) -> VersionMetrics:
        """The metrics of one loaded version (kept across reloads of the same version)."""
        key = (model, str(version))
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionMetrics(*key)
        return found

    def failed_unresolved(self, code: str) -> None:
        """A request that failed before it reached a served model (unknown name, ...)."""
        self._unresolved.failed(code)

    def state(self, model: str, version: int, state: str) -> None:
        self._states[(model, str(version))] = state

    def serve(self, host: str, port: int) -> tuple[int, WSGIServer]:
        """`serve_metrics` of this server's registry."""
        return serve_metrics(self.registry, host, port)

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        versions = list(self._versions.values())
        success = CounterMetricFamily(
            "kiln_inference_success", "Inference requests answered.", labels=labels
        )
        failure = CounterMetricFamily(
            "kiln_inference_failure",
            "Inference requests failed, by error code (model and version empty when the "
            "request named no served model).",
            labels=[*labels, "code"],
        )
        histograms = {
            "request": HistogramMetricFamily(
                "kiln_inference_request_duration_seconds",
                "Time from receiving a request to answering it.",
                labels=labels,
            ),
            "queue": HistogramMetricFamily(
                "kiln_inference_queue_duration_seconds",
                "Time a request waited in its model's queue.",
                labels=labels,
            ),
            "compute": HistogramMetricFamily(
                "kiln_inference_compute_duration_seconds",
                "Time one batch took to compute (inputs, engine, outputs).",
                labels=labels,
            ),
            "batch": HistogramMetricFamily(
                "kiln_inference_batch_size", "Rows per engine execution.", labels=labels
            ),
        }
        for v in versions:
            key = [v.model, v.version]
            success.add_metric(key, v.success)
            for name, family in histograms.items():
                buckets, total = getattr(v, name).exposition()
                family.add_metric(key, buckets, total)
        for v in (*versions, self._unresolved):
            for code, count in list(v.failures.items()):
                failure.add_metric([v.model, v.version, code], count)
        shadow = CounterMetricFamily(
            "kiln_shadow_requests",
            "Copies of requests a shadow rollout sent to a version, by outcome: answered, "
            "failed (the version's error), refused (queue full, or the version rejected the "
            "request). The client's request is unaffected either way.",
            labels=[*labels, "outcome"],
        )
        for v in versions:
            for outcome, count in list(v.shadow.items()):
                shadow.add_metric([v.model, v.version, outcome], count)
        state = GaugeMetricFamily(
            "kiln_model_state",
            "Load state of a model version: 1 for its current state.",
            labels=[*labels, "state"],
        )
        for (model, version), current in list(self._states.items()):
            for name in STATES:
                state.add_metric([model, version, name], 1.0 if name == current else 0.0)
        yield success
        yield failure
        yield shadow
        yield from histograms.values()
        yield state


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[int, WSGIServer]:
    """Expose `registry` at /metrics over HTTP on a daemon thread; returns the bound port and
    the server (call `.shutdown()` on it to stop). Raises OSError when it cannot listen.

    prometheus_client's `start_http_server`, except that answers do not name the server's
    software (`Server: WSGIServer/0.2 CPython/3.11.7` tells an attacker what to try).
    """

    class Server(_MetricsServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(
        host, port, _named(make_wsgi_app(registry)), Server, handler_class=_Handler
    )
    threading.Thread(target=server.serve_forever, name="kiln-metrics", daemon=True).start()
    return int(server.server_port), server


SERVER_HEADER = "kiln"
"""What the metrics port says its software is: no library, no version."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Handler(WSGIRequestHandler):
    """Serves scrapes without logging each one or naming the server's software (error pages
    included)."""

    def version_string(self) -> str:
        return SERVER_HEADER

    def log_message(self, format: str, *args: Any) -> None:
        pass


_StartResponse = Callable[..., Any]
_App = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


def _named(app: _App) -> _App:
    """`app` answering with `Server: kiln` (wsgiref adds its own name and Python's otherwise)."""

    def named(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("Server", SERVER_HEADER)], exc_info)

        return app(environ, start)

    return named
