"""Run a whole `kiln serve` process: registry, core, gRPC and HTTP servers, metrics endpoint,
signals.

Both transports serve the one `ServingCore` from the one event loop. `serve` returns when
SIGTERM or SIGINT arrives (or `stop` is set): the server stops accepting requests on both,
finishes those in flight, drains every model's queue and closes the engines.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence

from prometheus_client.registry import Collector

import kiln.registry
from kiln.serving.core import ServingCore
from kiln.serving.grpc.server import GrpcServer
from kiln.serving.hooks import FeedbackHook, TrafficHook
from kiln.serving.http.server import HttpServer
from kiln.serving.listening import listen_problem
from kiln.serving.metrics import ServingMetrics
from kiln.serving.ready import Endpoints
from kiln.serving.repository import RegistryRepository
from kiln.serving.settings import ServingSettings
from kiln.settings import Settings
from kiln_engines import EngineOptions


async def serve(  # noqa: PLR0913 (keyword-only: what each caller plugs in)
    settings: ServingSettings,
    kiln_settings: Settings,
    *,
    on_ready: Callable[[Endpoints], None] | None = None,
    stop: asyncio.Event | None = None,
    traffic_hook: TrafficHook | None = None,
    feedback_hook: FeedbackHook | None = None,
    collectors: Sequence[Collector] = (),
    handle_signals: bool = True,
    worker: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT (when `handle_signals`, which needs the main thread) or until
    `stop` is set; `on_ready` is called once everything listens. `collectors` join the
    server's Prometheus registry (a traffic logger's counters, say). When this returns, every
    request has been answered and has reached the hooks.

    A `worker` of `kiln serve --workers` (`kiln.serving.workers`) binds gRPC and HTTP with
    SO_REUSEPORT (the ports its siblings share) and its metrics on 127.0.0.1 only (its
    parent scrapes them and serves the public metrics port)."""
    stop = stop or asyncio.Event()
    metrics_host = "127.0.0.1" if worker else settings.host
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    # One engine thread per core but one: the event loop (gRPC, decoding, batching) needs a
    # core of its own, and onnxruntime's spinning pool threads starve it otherwise (measured:
    # 2 engine threads on a 2-core host served less than half of what 1 thread did).
    threads = settings.threads or kiln_settings.threads or max(1, kiln_settings.thread_count() - 1)
    registry = kiln.registry.open(settings=kiln_settings)
    metrics_server = None
    try:
        repository = RegistryRepository(
            registry,
            options=EngineOptions(intra_op_threads=threads),
            engine_kind=settings.engine_kind,
        )
        metrics = ServingMetrics()
        for collector in collectors:
            metrics.registry.register(collector)
        core = ServingCore(
            repository,
            settings,
            metrics=metrics,
            traffic_hook=traffic_hook,
            feedback_hook=feedback_hook,
        )
        server = GrpcServer(core, settings, reuse_port=worker)
        http = None
        if settings.http_port is not None:
            http = HttpServer(core, settings, reuse_port=worker)
        try:
            await core.start(settings.models)
            port = await server.start()
            http_port = await http.start() if http is not None else None
            metrics_port = None
            if settings.metrics_port is not None:
                try:
                    metrics_port, metrics_server = metrics.serve(
                        metrics_host, settings.metrics_port
                    )
                except OSError:
                    raise listen_problem(
                        metrics_host,
                        settings.metrics_port,
                        "the metrics",
                        "--metrics-port (or --no-metrics)",
                    ) from None
            if on_ready is not None:
                served = tuple(
                    f"{m.label} ({m.opened.kind}/{m.opened.device})" for m in core.loaded_models()
                )
                on_ready(Endpoints(port, metrics_port, served, http_port))
            await stop.wait()
        finally:
            # Also after a failed start: whatever was loaded drains and closes. The gRPC
            # server's stop makes the core refuse new requests (HTTP's too: 503) and waits for
            # those in flight on both transports; HTTP's connections close after that.
            await server.stop()
            if http is not None:
                await http.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if metrics_server is not None:
            metrics_server.shutdown()
        registry.close()
