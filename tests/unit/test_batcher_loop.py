"""The dynamic batcher computing on the event loop (`on_loop`, `kiln serve --execution loop`).

On one core the engine runs between the loop's passes: requests that arrive while it computes
form the next batch. These tests drive it with closed-loop clients (each sends its next
request when its answer arrives) and count loop passes, never time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kiln.errors import QueueFull, RequestTimedOut
from kiln.serving.batcher import DynamicBatcher
from kiln.serving.settings import ServingSettings
from kiln.serving.validation import RequestValidator
from kiln.settings import usable_cores

Tensors = dict[str, npt.NDArray[Any]]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """Doubles `x`; records each batch's rows and the thread it ran on."""

    def __init__(self, fail_when: float | None = None) -> None:
        self.batches: list[int] = []
        self.threads: set[int] = set()
        self.fail_when = fail_when

    def __call__(self, inputs: Tensors) -> Tensors:
        x = inputs["x"]
        self.batches.append(x.shape[0])
        self.threads.add(threading.get_ident())
        if self.fail_when is not None and (x == self.fail_when).any():
            raise RuntimeError("engine exploded")
        return {"y": x * 2}


def rows(n: int, value: float = 1.0) -> Tensors:
    return {"x": np.full((n, 3), value, dtype=np.float32)}


async def clients(batcher: DynamicBatcher, count: int, each: int) -> list[float]:
    """`count` closed-loop clients sending `each` requests apiece; returns every answer."""
    answers: list[float] = []

    async def client(index: int) -> None:
        for i in range(each):
            value = float(index * 1000 + i)
            outputs, _ = await asyncio.wait_for(batcher.submit(rows(1, value), rows=1), 10)
            answers.append(float(outputs["y"][0, 0]) / 2)
            assert outputs["y"].shape == (1, 3) and float(outputs["y"][0, 0]) == 2 * value

    await asyncio.gather(*(client(i) for i in range(count)))
    return answers


async def test_closed_loop_clients_form_full_batches_on_the_loop() -> None:
    engine = Recorder()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=32, on_loop=True)
    answers = await clients(batcher, count=16, each=20)
    assert sorted(answers) == sorted(float(c * 1000 + i) for c in range(16) for i in range(20))
    assert engine.threads == {threading.get_ident()}  # no worker thread
    # All 16 clients wait on every batch: each one after the first holds all of them.
    assert sum(engine.batches) == 320
    assert engine.batches[1:] == [16] * (len(engine.batches) - 1)
    await batcher.close()


async def test_when_load_falls_batches_follow_it_down_and_nothing_waits_forever() -> None:
    engine = Recorder()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=32, on_loop=True)
    await clients(batcher, count=16, each=5)  # batches of 16: the batcher gathers for 16
    assert engine.batches[-1] == 16
    before = len(engine.batches)
    answers = await clients(batcher, count=2, each=20)  # two clients now: it stops waiting
    assert len(answers) == 40
    assert max(engine.batches[before:]) <= 2 and sum(engine.batches[before:]) == 40
    await batcher.close()


async def test_batches_never_exceed_the_maximum() -> None:
    engine = Recorder()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=4, on_loop=True)
    futures = [batcher.submit(rows(1, float(i)), rows=1) for i in range(10)]
    results = await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert engine.batches == [4, 4, 2]
    for i, (outputs, timings) in enumerate(results):
        assert float(outputs["y"][0, 0]) == 2.0 * i
        assert timings.batch_size == [4, 4, 2][i // 4]
    await batcher.close()


async def test_a_lone_request_at_light_load_runs_after_one_pass() -> None:
    engine = Recorder()
    # No inline-at-idle shortcut: the request goes through the queue and the gathering.
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=32, on_loop=True)
    for _ in range(3):  # light load: one request at a time
        future = batcher.submit(rows(1), rows=1)
        passes = 0
        while not future.done():
            await asyncio.sleep(0)
            passes += 1
            assert passes <= 4, "a lone request waited for company at light load"
        await future
    assert engine.batches == [1, 1, 1]
    await batcher.close()


async def test_a_full_queue_refuses_at_once_on_the_loop() -> None:
    engine = Recorder()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=2, max_queue_size=3, on_loop=True)
    accepted = [batcher.submit(rows(1), rows=1) for _ in range(3)]
    with pytest.raises(QueueFull, match="3 requests queued"):
        batcher.submit(rows(1), rows=1)
    await asyncio.wait_for(asyncio.gather(*accepted), 10)
    assert engine.batches == [2, 1]
    await batcher.close()


async def test_a_request_past_its_timeout_fails_alone_and_the_rest_run() -> None:
    engine = Recorder()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8, on_loop=True)
    patient = batcher.submit(rows(1, 1.0), rows=1)
    hasty = batcher.submit(rows(1, 2.0), rows=1, timeout_us=1)
    time.sleep(0.001)  # the loop is held past the timeout before the batch is taken
    outcomes = await asyncio.wait_for(asyncio.gather(patient, hasty, return_exceptions=True), 10)
    assert isinstance(outcomes[1], RequestTimedOut)
    assert "past its timeout" in str(outcomes[1])
    outputs, _ = outcomes[0]
    assert float(outputs["y"][0, 0]) == 2.0
    assert engine.batches == [1]
    await batcher.close()


async def test_an_engine_error_on_the_loop_fails_its_batch_and_the_batcher_goes_on() -> None:
    engine = Recorder(fail_when=7.0)
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=8, on_loop=True)
    bad = [batcher.submit(rows(1, v), rows=1) for v in (6.0, 7.0)]
    outcomes = await asyncio.wait_for(asyncio.gather(*bad, return_exceptions=True), 10)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    outputs, _ = await asyncio.wait_for(batcher.submit(rows(1, 1.0), rows=1), 10)
    assert float(outputs["y"][0, 0]) == 2.0
    await batcher.close()


async def test_close_drains_what_is_queued_on_the_loop() -> None:
    engine = Recorder()
    batcher = DynamicBatcher(engine, label="m:1", max_batch_size=4, on_loop=True)
    futures = [batcher.submit(rows(1), rows=1) for _ in range(6)]
    await batcher.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert sum(engine.batches) == 6


def test_auto_execution_follows_the_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from kiln import settings as kiln_settings

    monkeypatch.setattr(kiln_settings, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert usable_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert usable_cores() == 4
    monkeypatch.setattr(kiln_settings, "_cgroup_cpu_quota", lambda: 1.5)  # --cpus 1.5
    assert usable_cores() == 2
    monkeypatch.setattr(kiln_settings, "_cgroup_cpu_quota", lambda: 0.25)
    assert usable_cores() == 1
    assert ServingSettings().execution == "auto"
    with pytest.raises(ValueError, match="execution"):
        ServingSettings(execution="fibers")  # type: ignore[arg-type]


@pytest.mark.parametrize("on_loop", [True, False], ids=["loop", "thread"])
async def test_a_request_with_nan_fails_alone_when_finiteness_is_checked_per_batch(
    on_loop: bool,
) -> None:
    from kiln.errors import InferRequestInvalid
    from kiln.serving.messages import TensorSpec

    spec = TensorSpec("x", "FP32", (-1, 3), np.dtype(np.float32))
    out = TensorSpec("y", "FP32", (-1, 3), np.dtype(np.float32))
    validator = RequestValidator("m:1", (spec,), (out,), 8, defer_finite=True)
    assert validator.screen is validator
    engine = Recorder()
    executions: list[int] = []
    batcher = DynamicBatcher(
        engine, label="m:1", max_batch_size=8, on_loop=on_loop, screen=validator.screen,
        on_execution=lambda n, *_: executions.append(n),
    )  # fmt: skip
    values = [1.0, float("nan"), 3.0, float("inf"), 5.0]
    requests = [rows(1, v) for v in values]
    for inputs in requests:
        assert validator(inputs, ()) == 1  # deferred: the validator lets them all through
    futures = [batcher.submit(inputs, rows=1) for inputs in requests]
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
    for value, outcome in zip(values, outcomes, strict=True):
        if np.isfinite(value):
            outputs, timings = outcome
            assert float(outputs["y"][0, 0]) == 2 * value
            assert timings.batch_size == 3  # only the finite rows ran
        else:
            assert isinstance(outcome, InferRequestInvalid)
            assert "model m:1: input 'x' holds NaN or infinite values" in str(outcome)
    assert sum(engine.batches) == 3 and sum(executions) == 3
    # A batch where every request is refused runs nothing and the batcher goes on.
    refused = [batcher.submit(rows(1, float("nan")), rows=1) for _ in range(2)]
    outcomes = await asyncio.wait_for(asyncio.gather(*refused, return_exceptions=True), 10)
    assert all(isinstance(o, InferRequestInvalid) for o in outcomes)
    assert sum(engine.batches) == 3
    outputs, _ = await asyncio.wait_for(batcher.submit(rows(1, 2.0), rows=1), 10)
    assert float(outputs["y"][0, 0]) == 4.0
    await batcher.close()


def test_allowing_nonfinite_values_leaves_nothing_to_screen() -> None:
    from kiln.serving.messages import TensorSpec

    spec = TensorSpec("x", "FP32", (-1, 3), np.dtype(np.float32))
    ints = TensorSpec("n", "INT64", (-1, 3), np.dtype(np.int64))
    allowed = RequestValidator("m:1", (spec,), (), 8, allow_nonfinite=True, defer_finite=True)
    assert allowed.screen is None
    assert RequestValidator("m:1", (ints,), (), 8, defer_finite=True).screen is None
    assert RequestValidator("m:1", (spec,), (), 8).screen is None  # checked per request
