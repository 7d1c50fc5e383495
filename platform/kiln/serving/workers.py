"""`kiln serve --workers N`: N server processes on one host sharing one gRPC port and one
HTTP port (SO_REUSEPORT), one metrics endpoint over all of them, one shutdown.

    pool = WorkerPool(settings, 2, command=["kiln", "serve"], traffic_log=True)
    code = pool.run(on_ready)    # the parent's exit code, once every worker has exited

The parent loads no model and runs no engine: it reserves the ports, starts each worker as a
fresh interpreter (a subprocess, never a fork: a forked copy of a process with engine and
gRPC threads inherits their locks in whatever state they were) with `WORKER_ENV` set to its
index, hands it its settings as one JSON line on its stdin, and waits for its ready line.
Every worker is a whole `kiln serve` process of its own: its own event loop, registry
connection, `ServingCore` and engines, alias watcher and traffic writer (whose part files
carry a uuid in their names, so the workers' files sit side by side in the same directories).
The kernel spreads new connections over the workers listening on a port (by a hash of the
connection's addresses); a connection stays with the worker that accepted it, so one gRPC
channel is served by one worker.

The parent prints the ready line (`kiln.serving.ready`) once every worker is ready, serves
the metrics port itself (`kiln.serving.worker_metrics`: each worker's metrics, labelled
`worker="i"`), and on SIGTERM or SIGINT sends SIGTERM to every worker, each of which drains as
a single server does; the parent exits 0 once all have exited 0. A worker that exits on its
own stops the rest: the parent logs which one and how, and exits non-zero (the worker's code,
or 1 when a signal killed it). It does not restart workers, nor serve on with fewer than
asked: a supervisor (systemd, Kubernetes) restarts the whole server, and a crash is seen.

Each worker also watches its stdin, the parent's pipe: when that closes (the parent was
killed), the worker drains and exits instead of serving on unsupervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

from prometheus_client import CollectorRegistry

from kiln.errors import InvalidArgument
from kiln.serving.listening import listen_problem
from kiln.serving.metrics import serve_metrics
from kiln.serving.ready import Endpoints, parse_ready_line
from kiln.serving.settings import ServingSettings
from kiln.serving.worker_metrics import WorkerMetrics
from kiln.settings import usable_cores

log = logging.getLogger("kiln.serving.workers")

AUTO: Final = "auto"
WORKER_ENV: Final = "KILN_SERVE_WORKER_INDEX"
"""Set (to the worker's index) in the environment of each worker the parent starts: what
tells `kiln serve` to read its settings from its stdin and serve as that worker."""
SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
STOP_GRACE_S: Final = 30.0
"""How much longer than the drain timeout a stopping worker may take (closing engines,
writing its traffic log) before the parent kills it."""


def parse_workers(text: str) -> int:
    """`--workers`: a whole number of at least 1, or `auto` (`kiln.settings.usable_cores`)."""
    value = text.strip().lower()
    if value == AUTO:
        return usable_cores()
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise InvalidArgument(
            f"--workers takes a whole number of at least 1, or 'auto' (one per core this "
            f"process may use: {usable_cores()}); got {text!r}"
        )
    return count


def worker_threads(workers: int, cores: int) -> int:
    """Engine threads per worker when none are set: the cores shared out, one per worker kept
    for its event loop (what one server does with all the cores: `kiln.serving.runner`)."""
    return max(1, cores // workers - 1)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told on its stdin: its settings and whether it logs traffic."""

    settings: dict[str, Any]
    traffic_log: bool

    def line(self) -> str:
        return json.dumps({"settings": self.settings, "traffic_log": self.traffic_log}) + "\n"

    @classmethod
    def read(cls, stream: IO[str]) -> WorkerSpec:
        """The spec the parent wrote to `stream`; InvalidArgument when there is none (the
        hidden worker option was given by hand)."""
        try:
            found = json.loads(stream.readline())
            return cls(dict(found["settings"]), bool(found["traffic_log"]))
        except (OSError, ValueError, KeyError, TypeError):  # no pipe, no JSON, not a spec
            raise InvalidArgument(
                f"{WORKER_ENV} is set only in the workers `kiln serve --workers N` starts, "
                "which read their settings from the parent; unset it, and use --workers N"
            ) from None


def watch_parent(stream: IO[str], stop: asyncio.Event) -> None:
    """Set `stop` when `stream` (a worker's stdin: the parent's pipe) ends, i.e. the parent is
    gone. Call from the worker's event loop."""
    loop = asyncio.get_running_loop()

    def wait() -> None:
        stream.read()
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait, name="kiln-parent-watch", daemon=True).start()


def reserve_port(host: str, port: int, what: str, option: str) -> socket.socket:
    """A socket bound to `host:port` (port 0: a free one) with SO_REUSEPORT, not listening:
    it holds the port from the moment it is chosen, and the workers bind beside it.

    A port some other socket holds is refused (PortUnavailable): the port is first bound
    without SO_REUSEPORT, since with it the bind would succeed beside another server's
    SO_REUSEPORT socket of the same user, and the two servers would silently split the
    connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as exclusive:
            exclusive.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers
            exclusive.bind((host, port))
            port = int(exclusive.getsockname()[1])
        shared = socket.socket(family, socket.SOCK_STREAM)
        try:
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            shared.bind((host, port))
        except OSError:
            shared.close()
            raise
    except OSError:
        raise listen_problem(host, port, what, option) from None
    return shared


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[str]
    endpoints: Endpoints | None = None
    code: int | None = None

    def stopped_cleanly(self) -> bool:
        """Exited 0, or SIGTERM reached it before it had set up its handlers (still starting:
        it had served nothing, and was stopped as asked)."""
        return self.code == 0 or (self.code == -signal.SIGTERM and self.endpoints is None)

    def describe_exit(self) -> str:
        assert self.code is not None
        if self.code < 0:
            return f"was killed by {signal.Signals(-self.code).name}"
        return f"exited with code {self.code}"


class WorkerPool:
    """`count` workers, each running `command` (`kiln serve`, which `WORKER_ENV` in its
    environment makes a worker), serving `settings` on shared ports."""

    def __init__(
        self,
        settings: ServingSettings,
        count: int,
        *,
        command: Sequence[str],
        traffic_log: bool,
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.count = count
        self.command = list(command)
        self.traffic_log = traffic_log
        self.env = env
        self.workers: list[Worker] = []
        self.metrics = WorkerMetrics()
        self._events: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()

    def run(self, on_ready: Callable[[Endpoints], None]) -> int:
        """Start the workers, call `on_ready` once all are ready, serve until SIGTERM/SIGINT
        or until a worker exits; returns the exit code (0: every worker drained cleanly).
        Raises PortUnavailable (before any worker starts) when a port cannot be had."""
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig in SIGNALS:  # SimpleQueue.put is reentrant: safe in a signal handler
            signal.signal(sig, lambda signum, _: self._events.put(("signal", signum, None)))
        try:
            with self._listening() as endpoints:
                self._start(endpoints)
                return self._supervise(endpoints, on_ready)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:
                if worker.process.poll() is None:  # only after an error of the parent's own
                    worker.process.kill()
                    worker.process.wait()
                if worker.process.stdin is not None:
                    with contextlib.suppress(OSError):
                        worker.process.stdin.close()

    @contextlib.contextmanager
    def _listening(self) -> Iterator[Endpoints]:
        """Reserve the shared ports and serve the metrics port; yields the public endpoints
        (models still empty)."""
        s = self.settings
        with contextlib.ExitStack() as stack:
            grpc = stack.enter_context(reserve_port(s.host, s.port, "the gRPC", "--port"))
            http_port = None
            if s.http_port is not None:
                http = reserve_port(s.host, s.http_port, "the HTTP", "--http-port (or --no-http)")
                http_port = int(stack.enter_context(http).getsockname()[1])
            metrics_port = None
            if s.metrics_port is not None:
                registry = CollectorRegistry()
                registry.register(self.metrics)
                try:
                    metrics_port, server = serve_metrics(registry, s.host, s.metrics_port)
                except OSError:
                    raise listen_problem(
                        s.host, s.metrics_port, "the metrics", "--metrics-port (or --no-metrics)"
                    ) from None
                stack.callback(server.shutdown)
            yield Endpoints(int(grpc.getsockname()[1]), metrics_port, (), http_port)

    def _start(self, public: Endpoints) -> None:
        spec = WorkerSpec(self._worker_settings(public), self.traffic_log)
        for index in range(self.count):
            process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**(self.env or os.environ), WORKER_ENV: str(index)},
                # Not in the terminal's process group: Ctrl-C reaches the parent only, which
                # stops every worker in order (SIGTERM) rather than each on its own.
                process_group=0,
            )
            worker = Worker(index, process)
            self.workers.append(worker)
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died at once: its exit says why
                process.stdin.write(spec.line())
                process.stdin.flush()
            threading.Thread(
                target=self._follow, args=(worker,), name=f"kiln-worker-{index}", daemon=True
            ).start()
        if self.settings.token:
            log.warning(
                "--token enables RepositoryModelLoad/Unload, which with --workers changes only "
                "the worker that receives the call; move aliases (kiln promote) instead"
            )
        pids = ", ".join(str(w.process.pid) for w in self.workers)
        log.info("started %d workers (pids %s) on gRPC port %d", self.count, pids, public.grpc_port)

    def _worker_settings(self, public: Endpoints) -> dict[str, Any]:
        """What every worker serves with: the parent's settings on the reserved ports, metrics
        on a private port of its own (0: the worker picks it; the parent reads it)."""
        given = self.settings.model_dump(mode="json")
        given["port"], given["http_port"] = public.grpc_port, public.http_port
        given["metrics_port"] = 0 if public.metrics_port is not None else None
        return given

    def _follow(self, worker: Worker) -> None:
        """Report the worker's ready line and its exit (a thread per worker)."""
        stdout = worker.process.stdout
        assert stdout is not None
        for line in stdout:
            endpoints = parse_ready_line(line)
            if endpoints is not None:
                self._events.put(("ready", worker.index, endpoints))
        self._events.put(("exit", worker.index, worker.process.wait()))

    def _supervise(self, public: Endpoints, on_ready: Callable[[Endpoints], None]) -> int:
        """Handle ready lines, exits and signals until every worker has exited."""
        failure: int | None = None
        deadline: float | None = None  # set once stopping: when the parent stops waiting
        ready = 0
        while any(w.code is None for w in self.workers):
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                kind, index, value = self._events.get(timeout=timeout)
            except queue.Empty:
                late = [w for w in self.workers if w.code is None]
                log.error("workers %s did not stop within %.0f s of SIGTERM; killing them",
                          ", ".join(str(w.index) for w in late), self._stop_wait_s)  # fmt: skip
                for w in late:
                    w.process.kill()
                    w.code = w.process.wait()
                failure = failure or 1
                break
            if kind == "signal":
                if deadline is None:
                    log.info("%s: stopping %d workers (each finishes its requests in flight)",
                             signal.Signals(index).name, self.count)  # fmt: skip
                    deadline = self._stop()
                continue
            worker = self.workers[index]
            if kind == "ready":
                worker.endpoints = value
                if value.metrics_port is not None:
                    self.metrics.add(index, value.metrics_port)
                ready += 1
                if ready == self.count and deadline is None:
                    log.info("all %d workers are ready", self.count)
                    on_ready(
                        Endpoints(public.grpc_port, public.metrics_port, value.models,
                                  public.http_port)
                    )  # fmt: skip
                continue
            worker.code = value
            self.metrics.remove(index)
            if deadline is None:  # it stopped on its own: stop the rest, and say so
                when = "before it was ready" if worker.endpoints is None else "unexpectedly"
                log.error(
                    "worker %d (pid %d) %s %s; stopping the other workers: kiln serve "
                    "--workers does not serve with fewer workers than asked (restart it)",
                    index, worker.process.pid, worker.describe_exit(), when,
                )  # fmt: skip
                failure = worker.code if worker.code > 0 else 1
                deadline = self._stop()
            elif not worker.stopped_cleanly():
                log.error("worker %d %s while stopping", index, worker.describe_exit())
        if failure is not None:
            return failure
        unclean = [w.code for w in self.workers if not w.stopped_cleanly()]
        return next((c if c > 0 else 1 for c in unclean if c is not None), 0)

    @property
    def _stop_wait_s(self) -> float:
        return self.settings.drain_timeout_s + STOP_GRACE_S

    def _stop(self) -> float:
        """SIGTERM every worker still running; returns the deadline for them to exit."""
        for worker in self.workers:
            if worker.code is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        return time.monotonic() + self._stop_wait_s
