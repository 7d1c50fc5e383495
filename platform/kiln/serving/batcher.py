"""A dynamic batcher with Triton's semantics, for one loaded engine.

Requests queue; a batch runs when it holds `max_batch_size` rows, or when the oldest request has
waited `max_queue_delay_us` (0: run whatever is queued as soon as the engine is free). While a
batch runs, new requests keep queueing, so under load batches fill up by themselves without any
added delay. The queue is bounded: a request that finds `max_queue_size` requests waiting is
refused at once (`QueueFull`) rather than left to time out. A request's own timeout bounds its
time in the queue (`RequestTimedOut`); once its batch starts, it completes.

Engine calls run on a single worker thread: the loop keeps accepting and decoding requests
(and forming the next batch) while the engine computes, and one batch at a time keeps every
core for the engine's own intra-op threads. One exception, for latency at light load: with
`inline_after_idle_us`, a request that finds the engine idle for at least that long (and for
twice its last execution, which must have been short) runs at once on the event loop. Handing
it to the worker thread and back costs two thread wake-ups, as much as a small model's whole
compute on a small host. Under load requests arrive closer together than that, and batch on
the worker thread as usual: batching one request at a time on the loop would cost throughput.
Only with `max_queue_delay_us` 0: a delay asks for batches.

With `on_loop` (a process with one core: `ServingSettings.execution`), every batch computes on
the event loop instead: a worker thread adds no parallelism there, only two thread switches
per batch and a loop that cannot decode while the engine holds the core. Requests then queue
only between batches, so before each batch the batcher gathers what the transport hands over
(`_gather`). A `screen` (the validator's finiteness check) runs once per batch over the joined
inputs instead of once per request; the requests of a batch that fails it are checked one by
one, and only those holding bad values fail.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kiln.errors import (
    EngineOutputInvalid,
    QueueFull,
    RequestTimedOut,
    ServerShuttingDown,
)
from kiln.serving.messages import Timings

Tensors = dict[str, npt.NDArray[Any]]
InferFn = Callable[[Tensors], Tensors]
ExecutionObserver = Callable[[int, int, int, int], None]
"""Called on the event loop after each execution with (rows, input_ns, infer_ns, output_ns)."""


class BatchScreen(Protocol):
    """A check that costs much less once per batch than once per request (one vectorised pass
    over the joined inputs): `all_finite` says whether a whole batch passes, and only when it
    does not, `check_finite` finds the requests that fail (raising their error)."""

    def all_finite(self, feed: Tensors) -> bool: ...

    def check_finite(self, inputs: Tensors) -> None: ...


_QUEUED, _TAKEN = 0, 1
_GATHER_IDLE_MIN_NS = 100_000
_GATHER_IDLE_MAX_NS = 2_000_000
_GATHER_YIELD_S = 20e-6
_GATHER_MAX_NS = 10_000_000
"""On the loop under load, a batch gathers requests until it reaches the size recent batches
reached, while the transport keeps handing over requests (none for four usual arrival
spacings, bounded by the IDLE values: it has no more), for at most _GATHER_MAX_NS; waiting,
the loop sleeps _GATHER_YIELD_S at a time (`DynamicBatcher._gather`). Measured on the pinned
benchmark (benchmarks/RESULTS.md, issue 21): a fixed 50 us gap gave batches of ~10 at
concurrency 32, this ~18."""
_TARGET_DECAY = 0.8
"""How fast the batch size to gather for falls when batches come out smaller (load falling)."""
_INLINE_MAX_NS = 2_000_000
"""Engines whose last execution took longer never run on the event loop at light load: it
must stay responsive (health checks, metadata, other models) while they compute."""
LOOP_MAX_NS = 10_000_000
"""With `on_loop`, a batch whose execution took longer sends the next one to the worker
thread: on one core the two share it anyway, but a loop held for tens of milliseconds delays
every other request, health checks and other models' batches included."""


class _Pending:
    __slots__ = ("enqueued_ns", "future", "inputs", "key", "rows", "state", "timer")

    def __init__(
        self, inputs: Tensors, rows: int, future: asyncio.Future[tuple[Tensors, Timings]]
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        # Requests batch together only when their non-batch dimensions agree.
        self.key = tuple([a.shape[1:] for a in inputs.values()])
        self.future = future
        self.enqueued_ns = time.perf_counter_ns()
        self.state = _QUEUED
        self.timer: asyncio.TimerHandle | None = None


class DynamicBatcher:
    """Queues requests for one engine and runs them in batches on a worker thread.

    `max_batch_size` 0 means the engine has no batch dimension: each request runs alone.
    Create it inside a running event loop; `close()` it to drain.
    """

    def __init__(  # noqa: PLR0913 (keyword-only, each a policy the caller chooses)
        self,
        infer: InferFn,
        *,
        label: str,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        max_queue_size: int = 0,
        on_execution: ExecutionObserver | None = None,
        inline_after_idle_us: int = 0,
        on_loop: bool = False,
        screen: BatchScreen | None = None,
    ) -> None:
        if max_batch_size < 0 or max_queue_delay_us < 0 or max_queue_size < 0:
            raise ValueError(
                "max_batch_size, max_queue_delay_us and max_queue_size must be >= 0, got "
                f"{max_batch_size}, {max_queue_delay_us}, {max_queue_size}"
            )
        self.label = label
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.max_queue_size = max_queue_size
        self._infer = infer
        self._max_rows = max(max_batch_size, 1)
        self._delay_ns = max_queue_delay_us * 1000
        self._on_execution = on_execution
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._closing = False
        # A delay asks for batches: never skip it.
        self._inline_idle_ns = inline_after_idle_us * 1000 if max_queue_delay_us == 0 else 0
        self._on_loop = on_loop
        self._screen = screen
        self._busy = False  # a batch is executing
        self._idle_since_ns = 0
        self._last_execution_ns = 0
        self._last_rows = 0
        self._target = 1.0  # the batch size recent executions reached (see `_gather`)
        self._spacing_ns = 0.0  # the usual time between arrivals while gathering
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kiln-infer-{label}")
        self._task = self._loop.create_task(self._run(), name=f"kiln-batcher-{label}")

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def submit(
        self, inputs: Tensors, rows: int, timeout_us: int = 0
    ) -> asyncio.Future[tuple[Tensors, Timings]]:
        """Queue one request of `rows` rows; the future gives its outputs and timings.

        Raises `QueueFull` or `ServerShuttingDown` at once. The future fails with
        `RequestTimedOut` when `timeout_us` passes before its batch starts, or with the engine's
        error. Cancelling the future withdraws a request that has not started.
        """
        if self._closing:
            raise ServerShuttingDown(f"model {self.label} is unloading; retry the request")
        if self.max_queue_size and len(self._queue) >= self.max_queue_size:
            raise QueueFull(
                f"model {self.label} has {len(self._queue)} requests queued (the maximum); "
                "retry with backoff, or raise --max-queue-size"
            )
        pending = _Pending(inputs, rows, self._loop.create_future())
        if (
            self._inline_idle_ns
            and not self._busy
            and not self._queue
            and self._last_execution_ns < _INLINE_MAX_NS
            and pending.enqueued_ns - self._idle_since_ns
            > max(self._inline_idle_ns, 2 * self._last_execution_ns)
        ):
            self._run_inline(pending)
            return pending.future
        if timeout_us > 0:
            pending.timer = self._loop.call_later(timeout_us / 1e6, self._expire, pending)
        self._queue.append(pending)
        self._queued_rows += rows
        if len(self._queue) == 1 or self._queued_rows >= self._max_rows:
            self._wakeup.set()
        return pending.future

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, stop the worker thread."""
        self._closing = True
        self._wakeup.set()
        await asyncio.shield(self._task)
        self._executor.shutdown(wait=False)

    def _expire(self, pending: _Pending) -> None:
        if pending.state == _QUEUED and not pending.future.done():
            waited_us = (time.perf_counter_ns() - pending.enqueued_ns) // 1000
            pending.future.set_exception(
                RequestTimedOut(
                    f"request waited {waited_us} us in the queue of model {self.label}, past "
                    "its timeout; the server is overloaded: retry later or raise the timeout"
                )
            )

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._delay_ns and self._queued_rows < self._max_rows and not self._closing:
                remaining = self._queue[0].enqueued_ns + self._delay_ns - time.perf_counter_ns()
                if remaining > 0:
                    self._wakeup.clear()
                    timer = self._loop.call_later(remaining / 1e9, self._wakeup.set)
                    await self._wakeup.wait()
                    timer.cancel()
                    continue  # full now, or the delay is over: look again
            if self._on_loop and self._last_execution_ns < LOOP_MAX_NS:
                await self._gather()
                batch = self._take()
                if batch:
                    self._run_here(batch)
                await asyncio.sleep(0)  # let the answers leave before the next batch
                continue
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _gather(self) -> None:
        # On the loop nothing queues while the engine computes: requests that arrive meanwhile
        # wait in the transport and reach the queue over the loop's next passes, one by one as
        # the transport decodes them. At light load (the last batch was one request and one
        # waits) one pass, for any request already on its way, and run. Under load, gather up
        # to the batch size recent executions reached (`_target`: the closed-loop clients' or
        # the arrival rate's share), while requests keep coming: when none has come for four
        # times the usual spacing between arrivals (`_spacing_ns`, what the transport costs
        # per request on this host; within _GATHER_IDLE_MIN_NS.._GATHER_IDLE_MAX_NS) the
        # transport has nothing more and the batch runs. While waiting the loop gives the
        # core to the transport's threads (a short sleep: asyncio's own timers cannot wait
        # less than a millisecond).
        if self._queued_rows >= self._max_rows:
            return
        loaded = self._last_rows > 1 or len(self._queue) > 1
        target = min(self._max_rows, max(2, int(self._target))) if loaded else 0
        started = idle_since = time.perf_counter_ns()
        while True:
            queued = len(self._queue)
            await asyncio.sleep(0)
            if self._queued_rows >= self._max_rows or self._closing:
                return
            now = time.perf_counter_ns()
            if len(self._queue) > queued:
                if not loaded:
                    loaded = True
                    target = min(self._max_rows, max(2, int(self._target)))
                spacing = (now - idle_since) / (len(self._queue) - queued)
                self._spacing_ns += 0.2 * (spacing - self._spacing_ns)
                idle_since = now
                continue
            if self._queued_rows >= target or now - started >= _GATHER_MAX_NS:
                return
            idle = min(_GATHER_IDLE_MAX_NS, max(_GATHER_IDLE_MIN_NS, 4 * self._spacing_ns))
            if now - idle_since >= idle:
                return
            time.sleep(_GATHER_YIELD_S)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        queue = self._queue
        while queue:
            head = queue[0]
            if head.future.done():  # timed out or cancelled by its client while queued
                queue.popleft()
                self._queued_rows -= head.rows
                continue
            if batch and (rows + head.rows > self._max_rows or head.key != batch[0].key):
                break
            queue.popleft()
            self._queued_rows -= head.rows
            head.state = _TAKEN
            if head.timer is not None:
                head.timer.cancel()
            batch.append(head)
            rows += head.rows
            if self.max_batch_size == 0:
                break
        return batch

    def _run_inline(self, pending: _Pending) -> None:
        pending.state = _TAKEN
        self._run_here([pending])

    def _run_here(self, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        try:
            computed = self._compute(batch)
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self._finished(batch, started, *computed)

    async def _execute(self, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        self._busy = True
        try:
            computed = await self._loop.run_in_executor(self._executor, self._compute, batch)
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            self._busy = False
        self._finished(batch, started, *computed)

    def _finished(
        self,
        batch: list[_Pending],
        started: int,
        results: list[Tensors | Exception],
        rows: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        self._idle_since_ns = time.perf_counter_ns()
        self._last_execution_ns = input_ns + infer_ns + output_ns
        self._last_rows = rows
        self._target = max(float(rows), self._target * _TARGET_DECAY)
        if self._on_execution is not None and rows:
            self._on_execution(rows, input_ns, infer_ns, output_ns)
        for pending, outputs in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(outputs, Exception):
                pending.future.set_exception(outputs)
                continue
            timings = Timings(started - pending.enqueued_ns, input_ns, infer_ns, output_ns, rows)
            pending.future.set_result((outputs, timings))

    def _compute(
        self, batch: list[_Pending]
    ) -> tuple[list[Tensors | Exception], int, int, int, int]:
        """(each request's outputs or error, rows executed, input_ns, infer_ns, output_ns).
        Runs on the worker thread (or the loop)."""
        t0 = time.perf_counter_ns()
        feed = _feed(batch)
        screen = self._screen
        refused: dict[int, Exception] = {}
        if screen is not None and not screen.all_finite(feed):
            # Rare: find the requests that hold the bad values; they fail alone.
            kept = []
            for index, pending in enumerate(batch):
                try:
                    screen.check_finite(pending.inputs)
                except Exception as exc:
                    refused[index] = exc
                else:
                    kept.append(pending)
            if not kept:
                return [refused[i] for i in range(len(batch))], 0, 0, 0, 0
            feed = _feed(kept)
        else:
            kept = batch
        t1 = time.perf_counter_ns()
        outputs = self._infer(feed)
        t2 = time.perf_counter_ns()
        total = sum(p.rows for p in kept) if len(kept) > 1 else kept[0].rows
        results: list[Tensors | Exception]
        if len(kept) == 1:
            results = [outputs]
        else:
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != total:
                    raise EngineOutputInvalid(
                        f"model {self.label}: output '{name}' has shape {list(array.shape)} for "
                        f"a batch of {total} rows; the engine must keep the batch dimension"
                    )
            results = []
            start = 0
            for pending in kept:
                stop = start + pending.rows
                results.append({name: array[start:stop] for name, array in outputs.items()})
                start = stop
        if refused:
            answers = iter(results)
            results = [refused.get(i) or next(answers) for i in range(len(batch))]
        t3 = time.perf_counter_ns()
        return results, total, t1 - t0, t2 - t1, t3 - t2


def _feed(batch: list[_Pending]) -> Tensors:
    """The engine's inputs for a batch: one request's own arrays, or every request's joined."""
    if len(batch) == 1:
        return batch[0].inputs
    return {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
