"""Opening a version as a served engine and retiring it: the steps that loading, hot swaps and
rollouts all take.

`VersionLoader.open` opens a version from the repository on a control thread, warms it, and
builds what serves it (validator, dynamic batcher, statistics, metrics); `retire` drains its
queue before closing its engine. Both report each state change to the listeners and the
metrics. Changes to one model are serialised by that model's `lock`; requests never wait on it
(they only read the table).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kiln.errors import KilnError
from kiln.serving.batcher import LOOP_MAX_NS, DynamicBatcher, InferFn
from kiln.serving.description import describe, warmup_inputs
from kiln.serving.messages import public_text
from kiln.serving.metrics import ServingMetrics
from kiln.serving.repository import ModelRepository
from kiln.serving.settings import ServingSettings
from kiln.serving.statistics import ModelStatistics
from kiln.serving.table import LoadedModel, ModelState
from kiln.serving.tokenization import TextStage
from kiln.serving.validation import RequestValidator
from kiln.settings import usable_cores
from kiln_engines import EngineError

log = logging.getLogger("kiln.serving")

StateListener = Callable[[str, int, ModelState], None]
"""Called on the event loop when a version's state changes: (model, version, state)."""

T = TypeVar("T")


class VersionLoader:
    """Opens versions from a repository as `LoadedModel`s and retires them."""

    def __init__(
        self, repository: ModelRepository, settings: ServingSettings, metrics: ServingMetrics
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.listeners: list[StateListener] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._control = ThreadPoolExecutor(2, thread_name_prefix="kiln-control")
        execution = settings.execution
        self._on_loop = execution == "loop" or (execution == "auto" and usable_cores() == 1)
        """Whether CPU engines compute on the event loop (`ServingSettings.execution`)."""

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (registry, engine loading) on a control thread."""
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)

    async def _timed(self, infer: InferFn, feed: dict[str, Any]) -> int:
        """Run one warm-up call on a control thread; returns how long it took (ns)."""
        started = time.perf_counter_ns()
        await self.blocking(infer, feed)
        return time.perf_counter_ns() - started

    def lock(self, name: str) -> asyncio.Lock:
        """The lock that serialises changes to model `name`."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def close(self) -> None:
        """Stop the control threads (after the last `retire`)."""
        self._control.shutdown(wait=False)

    async def open(self, name: str, version: int) -> LoadedModel:
        """Open, describe and warm version `version` of `name`; READY when it returns."""
        label = f"{name}:{version}"
        self._set_state(name, version, ModelState.LOADING)
        try:
            opened = await self.blocking(self.repository.open, name, version)
            description = describe(name, version, opened, self.settings)
            # A text model's description lists its `text` input first; the engine takes the rest.
            engine_inputs = description.inputs[1:] if opened.tokenizer else description.inputs
            validator = RequestValidator(
                label,
                engine_inputs,
                description.outputs,
                description.max_batch_size,
                allow_nonfinite=self.settings.allow_nonfinite,
                # Checked once per batch (`kiln.serving.batcher.BatchScreen`); a text model's
                # stage calls the validator itself, so it keeps every check per request.
                defer_finite=opened.tokenizer is None,
            )
            text: TextStage | None = None
            infer: InferFn = opened.engine.infer
            warmups = warmup_inputs(description)
            if opened.tokenizer is not None:
                text = TextStage(
                    label,
                    opened.tokenizer,
                    validator,
                    max_batch_size=description.max_batch_size,
                    max_text_bytes=self.settings.max_text_bytes,
                )
                infer = text.wrap(infer)
                warmups = text.warmup_inputs()
                description = dataclasses.replace(
                    description, parameters=text.parameters(opened.tokenizer_sha256)
                )
            slowest_ns = 0  # the slowest warm call (the largest batch)
            if self.settings.warmup:
                for feed in warmups:
                    took = await self._timed(infer, feed)
                    if took >= LOOP_MAX_NS:  # a first call also plans memory: time it again
                        took = await self._timed(infer, feed)
                    slowest_ns = max(slowest_ns, took)
        except BaseException:
            self._set_state(name, version, ModelState.UNAVAILABLE)
            raise
        statistics = ModelStatistics(name, version)
        metrics = self.metrics.bind(name, version)

        def executed(rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
            statistics.record_execution(rows, input_ns, infer_ns, output_ns)
            metrics.executed(rows, (input_ns + infer_ns + output_ns) / 1e9)

        # GPU engines keep to their worker thread (their CUDA state lives there), and so do
        # text models: tokenising must never run on the event loop.
        inline = opened.device == "cpu" and text is None
        loaded = LoadedModel(
            name=name,
            version=version,
            opened=opened,
            description=description,
            validator=validator if text is None else text.check,
            batcher=DynamicBatcher(
                infer,
                label=label,
                max_batch_size=description.max_batch_size,
                max_queue_delay_us=self.settings.max_queue_delay_us,
                max_queue_size=self.settings.max_queue_size,
                on_execution=executed,
                inline_after_idle_us=self.settings.inline_idle_us if inline else 0,
                # A model whose largest warm-up batch took longer than the loop may be held
                # keeps to its thread from the start.
                on_loop=inline and self._on_loop and slowest_ns < LOOP_MAX_NS,
                screen=validator.screen if text is None else None,
            ),
            statistics=statistics,
            metrics=metrics,
            text=text,
        )
        log.info("loaded %s (%s on %s)", label, opened.kind, opened.device)
        self._set_state(name, version, ModelState.READY)
        return loaded

    async def retire(self, loaded: LoadedModel) -> None:
        """Refuse new requests for `loaded`, let its queue drain, close its engine."""
        loaded.state = ModelState.UNLOADING
        self._set_state(loaded.name, loaded.version, ModelState.UNLOADING)
        try:
            await asyncio.wait_for(loaded.batcher.close(), self.settings.drain_timeout_s or None)
        except TimeoutError:
            log.warning("%s did not drain in %.0f s", loaded.label, self.settings.drain_timeout_s)
        await self.blocking(loaded.opened.engine.close)
        loaded.state = ModelState.UNAVAILABLE
        self._set_state(loaded.name, loaded.version, ModelState.UNAVAILABLE)
        log.info("unloaded %s", loaded.label)

    def _set_state(self, name: str, version: int, state: ModelState) -> None:
        self.metrics.state(name, version, _METRIC_STATES[state])
        for listener in self.listeners:
            listener(name, version, state)


def failure_reason(exc: BaseException) -> str:
    """Why a version could not be served, as the repository index shows it to any client: a
    Kiln or engine error's message without server paths; nothing of anything else (the server
    log has it all)."""
    if isinstance(exc, KilnError | EngineError):
        return public_text(str(exc))
    return "an internal error (the server log has the details)"


_METRIC_STATES = {
    ModelState.LOADING: "loading",
    ModelState.READY: "ready",
    ModelState.UNLOADING: "unloading",
    ModelState.UNAVAILABLE: "unloaded",
}
