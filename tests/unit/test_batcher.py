"""The dynamic batcher: batch formation, bounds, timeouts, cancellation, errors, draining.

The engine here is a test-local function (doubling its input) that can be held at a gate, so
requests pile up in the queue deterministically while a batch "runs".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kiln.errors import EngineOutputInvalid, QueueFull, RequestTimedOut
from kiln.serving.batcher import DynamicBatcher
from kiln.serving.messages import Timings

Tensors = dict[str, npt.NDArray[Any]]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class GatedDoubler:
    """Doubles `x`; records each batch's row count; can be held until released."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def __call__(self, inputs: Tensors) -> Tensors:
        self.entered.set()
        assert self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(x.shape[0])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine exploded")
        return {"y": x * 2}

    async def hold(self) -> None:
        """Close the gate; returns once the engine is blocked inside a call."""
        self.gate.clear()
        self.entered.clear()


def rows(n: int, value: float = 1.0, width: int = 3) -> Tensors:
    return {"x": np.full((n, width), value, dtype=np.float32)}


async def wait_entered(engine: GatedDoubler) -> None:
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, 10)


async def within(awaitable: Awaitable[Any], seconds: float = 10) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


async def test_single_request_runs_and_reports_timings() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8)
    outputs, timings = await within(batcher.submit(rows(2, 3.0), rows=2))
    np.testing.assert_array_equal(outputs["y"], np.full((2, 3), 6.0, dtype=np.float32))
    assert isinstance(timings, Timings)
    assert timings.batch_size == 2
    assert timings.queue_ns >= 0
    assert timings.compute_infer_ns > 0
    await batcher.close()


async def test_requests_queued_behind_a_running_batch_run_together_up_to_the_maximum() -> None:
    engine = GatedDoubler()
    executions: list[int] = []
    batcher = DynamicBatcher(
        engine,
        label="m:1",
        max_batch_size=4,
        on_execution=lambda n, *_: executions.append(n),
    )
    await engine.hold()
    first = batcher.submit(rows(1, 0.0), rows=1)
    await wait_entered(engine)
    queued = [batcher.submit(rows(1, float(i)), rows=1) for i in range(1, 11)]
    engine.gate.set()
    results = await within(asyncio.gather(first, *queued))
    assert engine.batches == [1, 4, 4, 2]
    assert executions == [1, 4, 4, 2]
    for i, (outputs, timings) in enumerate(results):
        # Each request gets exactly its own rows back, in order.
        np.testing.assert_array_equal(outputs["y"], np.full((1, 3), 2.0 * i, dtype=np.float32))
        assert timings.batch_size == engine.batches[[0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3][i]]
    await batcher.close()


async def test_requests_with_different_trailing_shapes_are_not_batched_together() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8)
    await engine.hold()
    first = batcher.submit(rows(1), rows=1)
    await wait_entered(engine)
    a = batcher.submit(rows(1, width=3), rows=1)
    b = batcher.submit(rows(1, width=5), rows=1)
    c = batcher.submit(rows(1, width=5), rows=1)
    engine.gate.set()
    (_, _), (_, _), (out_b, _), (out_c, _) = await within(asyncio.gather(first, a, b, c))
    assert engine.batches == [1, 1, 2]
    assert out_b["y"].shape == out_c["y"].shape == (1, 5)
    await batcher.close()


async def test_a_model_without_batch_dimension_runs_each_request_alone() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=0)
    await engine.hold()
    first = batcher.submit(rows(2), rows=1)
    await wait_entered(engine)
    others = [batcher.submit(rows(2), rows=1) for _ in range(3)]
    engine.gate.set()
    await within(asyncio.gather(first, *others))
    assert engine.batches == [2, 2, 2, 2]
    await batcher.close()


async def test_full_queue_refuses_at_once() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="digits:3", max_batch_size=1, max_queue_size=2)
    await engine.hold()
    running = batcher.submit(rows(1), rows=1)
    await wait_entered(engine)
    queued = [batcher.submit(rows(1), rows=1) for _ in range(2)]
    with pytest.raises(QueueFull, match=r"digits:3 has 2 requests queued"):
        batcher.submit(rows(1), rows=1)
    engine.gate.set()
    await within(asyncio.gather(running, *queued))
    await batcher.close()


async def test_timeout_fails_a_request_still_queued_and_the_rest_proceed() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8)
    await engine.hold()
    running = batcher.submit(rows(1), rows=1, timeout_us=1)  # already started: completes
    await wait_entered(engine)
    doomed = batcher.submit(rows(1), rows=1, timeout_us=1_000)
    patient = batcher.submit(rows(1), rows=1)
    with pytest.raises(RequestTimedOut, match="past its timeout"):
        await within(doomed)
    engine.gate.set()
    await within(asyncio.gather(running, patient))
    assert engine.batches == [1, 1]
    await batcher.close()


async def test_cancelled_requests_are_skipped() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8)
    await engine.hold()
    running = batcher.submit(rows(1), rows=1)
    await wait_entered(engine)
    withdrawn = batcher.submit(rows(5), rows=5)
    kept = batcher.submit(rows(1), rows=1)
    withdrawn.cancel()
    engine.gate.set()
    await within(asyncio.gather(running, kept))
    assert engine.batches == [1, 1]
    await batcher.close()


async def test_delay_waits_for_more_requests_but_a_full_batch_runs_at_once() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=4, max_queue_delay_us=20_000)
    pair = [batcher.submit(rows(1), rows=1) for _ in range(2)]
    await within(asyncio.gather(*pair))
    assert engine.batches == [2]  # both arrived within the delay: one execution
    # A delay far longer than the test's patience: only a full batch can finish in time.
    slow = DynamicBatcher(engine, label="m:2", max_batch_size=4, max_queue_delay_us=60_000_000)
    full = [slow.submit(rows(1), rows=1) for _ in range(4)]
    await within(asyncio.gather(*full), seconds=5)
    assert engine.batches == [2, 4]
    await batcher.close()
    await slow.close()


async def test_an_engine_error_fails_its_batch_only() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8)
    engine.fail_next = True
    with pytest.raises(RuntimeError, match="exploded"):
        await within(batcher.submit(rows(1), rows=1))
    outputs, _ = await within(batcher.submit(rows(1, 4.0), rows=1))
    assert outputs["y"][0, 0] == 8.0
    await batcher.close()


async def test_outputs_without_the_batch_dimension_are_an_engine_error() -> None:
    def collapse(inputs: Tensors) -> Tensors:
        return {"y": inputs["y"].sum(axis=0)}

    gate = GatedDoubler()
    batcher = DynamicBatcher(lambda t: collapse(gate(t)), label="m:1", max_batch_size=8)
    await gate.hold()
    first = batcher.submit(rows(1), rows=1)
    await wait_entered(gate)
    a, b = batcher.submit(rows(1), rows=1), batcher.submit(rows(1), rows=1)
    gate.gate.set()
    await within(first)
    for future in (a, b):
        with pytest.raises(EngineOutputInvalid, match="must keep the batch dimension"):
            await within(future)
    await batcher.close()


async def test_close_drains_queued_requests_then_refuses_new_ones() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=2)
    await engine.hold()
    futures = [batcher.submit(rows(1), rows=1) for _ in range(5)]
    await wait_entered(engine)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0)
    with pytest.raises(Exception, match="unloading"):
        batcher.submit(rows(1), rows=1)
    engine.gate.set()
    await within(closing)
    assert all(f.done() and not f.exception() for f in futures)
    assert sum(engine.batches) == 5


class ThreadRecorder:
    """Doubles `x` and records which thread ran each call."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.fail = False

    def __call__(self, inputs: Tensors) -> Tensors:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise RuntimeError("engine exploded")
        return {"y": inputs["x"] * 2}


async def test_an_idle_engine_runs_a_request_at_once_on_the_event_loop() -> None:
    engine = ThreadRecorder()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8, inline_after_idle_us=1)
    future = batcher.submit(rows(2, 3.0), rows=2)
    assert future.done()  # answered inside submit: no thread hand-off, no queue
    outputs, timings = future.result()
    np.testing.assert_array_equal(outputs["y"], np.full((2, 3), 6.0, dtype=np.float32))
    assert timings.batch_size == 2 and timings.compute_infer_ns > 0
    assert engine.threads == [threading.get_ident()]
    engine.fail = True
    # Idle "long enough" again whatever this host's timing (the threshold is twice the last
    # execution, which a preempted first call can stretch past the time since it ended).
    batcher._idle_since_ns = 0
    failed = batcher.submit(rows(1), rows=1)
    with pytest.raises(RuntimeError, match="engine exploded"):
        failed.result()  # an engine error fails that request alone, as on the thread
    await batcher.close()


async def test_requests_that_come_close_together_batch_on_the_worker_thread() -> None:
    engine = GatedDoubler()
    # Decades of idleness needed to run inline: every request here goes to the thread.
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8, inline_after_idle_us=10**18)
    await engine.hold()
    first = batcher.submit(rows(1), rows=1)
    await wait_entered(engine)
    queued = [batcher.submit(rows(1), rows=1) for _ in range(3)]
    assert not any(f.done() for f in queued)
    engine.gate.set()
    await within(asyncio.gather(first, *queued))
    assert engine.batches == [1, 3]
    await batcher.close()


async def test_a_busy_engine_is_never_bypassed() -> None:
    engine = GatedDoubler()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8, inline_after_idle_us=1)
    first = batcher.submit(rows(1), rows=1)
    assert first.done()  # idle: inline
    await engine.hold()
    loop = asyncio.get_running_loop()
    # Ages the idle clock past the threshold, then occupies the worker thread.
    batcher._idle_since_ns = 0
    batcher._last_execution_ns = 0
    batcher._busy = True
    queued = batcher.submit(rows(1), rows=1)
    assert not queued.done()  # the engine is busy: this one queues
    batcher._busy = False
    engine.gate.set()
    await within(queued)
    assert await loop.run_in_executor(None, lambda: engine.batches) == [1, 1]
    await batcher.close()


async def test_a_queue_delay_turns_inline_execution_off() -> None:
    engine = ThreadRecorder()
    batcher = DynamicBatcher(
        engine, label="m:1", max_batch_size=8, max_queue_delay_us=100, inline_after_idle_us=1
    )
    future = batcher.submit(rows(1), rows=1)
    assert not future.done()
    await within(future)
    assert engine.threads and engine.threads[0] != threading.get_ident()
    await batcher.close()
