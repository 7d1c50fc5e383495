"""Loading, unloading and hot-swapping versions in the model table.

`ModelLifecycle` opens versions from the repository (on a control thread), warms them, builds
their batchers and puts them in the table; it retires versions by draining their queues before
closing their engines; and its watcher polls the registry for aliases that moved and swaps the
new version in. Changes for one model are serialised by a per-model lock; requests never wait
on it (they only read the table).

The watcher also follows each model's rollout (canary or shadow) for models whose default
follows an alias: it loads and warms the rollout's version before any request is routed to it
(`ModelTable.routing`), moves the routing when the rollout's alias moves, and when the rollout
ends (or its version becomes the default) stops routing first, then drains and unloads the
version unless it is pinned or is the default. A version that cannot load leaves the default
answering everything; the reason shows in the repository index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from kiln.errors import (
    FailedPrecondition,
    InferRequestInvalid,
    KilnError,
    ServerShuttingDown,
    quote,
)
from kiln.registry import parse_reference
from kiln.serving.batcher import DynamicBatcher
from kiln.serving.codec import datatype_of
from kiln.serving.messages import ModelDescription, TensorSpec, public_text
from kiln.serving.metrics import ServingMetrics
from kiln.serving.repository import ModelRepository, OpenedEngine, RolloutState
from kiln.serving.settings import ServingSettings
from kiln.serving.statistics import ModelStatistics
from kiln.serving.table import LoadedModel, ModelState, ModelTable, Routing, ServedModel
from kiln.serving.validation import RequestValidator
from kiln.traffic import Route
from kiln_engines import DYNAMIC, EngineError, Signature

log = logging.getLogger("kiln.serving")

StateListener = Callable[[str, int, ModelState], None]
"""Called on the event loop when a version's state changes: (model, version, state)."""

PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "onnx": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
    "aotinductor": "pytorch_aotinductor",
}
"""Triton's platform name for each artifact kind (clients show it; perf_analyzer reads it)."""

T = TypeVar("T")


class ModelLifecycle:
    """Puts versions into the table and takes them out, including hot swaps."""

    def __init__(
        self,
        table: ModelTable,
        repository: ModelRepository,
        settings: ServingSettings,
        metrics: ServingMetrics,
    ) -> None:
        self.table = table
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.listeners: list[StateListener] = []
        self.stopping = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._control = ThreadPoolExecutor(2, thread_name_prefix="kiln-control")
        self._watcher: asyncio.Task[None] | None = None

    def watch(self) -> None:
        """Start polling the registry for moved aliases (every `poll_interval_s`)."""
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name="kiln-alias-watcher"
        )

    async def stop(self) -> None:
        """Stop watching, drain and close every version."""
        self.stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.table.routing.clear()
        for name in list(self.table.models):
            async with self._lock(name):
                served = self.table.models.pop(name, None)
                if served is not None:
                    await asyncio.gather(*(self._retire(m) for m in served.versions.values()))
        self._control.shutdown(wait=False)

    async def load(self, text: str) -> LoadedModel:
        """Serve `text` (`digits`, `digits@candidate`, `digits:3`); returns the loaded version.

        A new model's first reference sets its default version. For a served model, an alias
        reference becomes the one its default follows (swapping now if it points elsewhere);
        a version reference loads that version beside the default.
        """
        if self.stopping:
            raise ServerShuttingDown("the server is shutting down")
        reference = parse_reference(text)
        models = self.table.models
        async with self._lock(reference.name):
            version = await self.blocking(self.repository.resolve, reference)
            served = models.get(reference.name)
            if served is None:
                served = models[reference.name] = ServedModel(reference.name, reference)
                try:
                    loaded = await self._open(reference.name, version)
                except BaseException:
                    del models[reference.name]
                    raise
                served.versions[version] = loaded
                served.default = loaded
            elif reference.version is not None:
                loaded = served.versions.get(version) or await self._open(reference.name, version)
                served.versions[version] = loaded
            else:
                served.reference = reference
                served.failed_version = None
                loaded = await self._swap(served, version)
            if reference.version is not None:
                served.pinned.add(version)
            return loaded

    async def unload(self, text: str) -> None:
        """Stop serving a model (`digits`) or one of its versions (`digits:3`), draining first."""
        name, _, number = text.partition(":")
        if "@" in name:
            raise InferRequestInvalid(
                f"unload takes a model name or NAME:VERSION, not an alias ({quote(text)})"
            )
        async with self._lock(name):
            served = self.table.served(name)
            if not number:
                self.table.routing.pop(name, None)
                del self.table.models[name]
                await asyncio.gather(*(self._retire(m) for m in served.versions.values()))
                return
            loaded = self.table.version(name, number)
            if loaded is served.default:
                raise FailedPrecondition(
                    f"{loaded.label} is the version '{name}' serves by default; unload '{name}' "
                    f"to stop serving the model, or load another default first"
                )
            if loaded.version == served.rollout_version:
                raise FailedPrecondition(
                    f"{loaded.label} takes part in {name}'s running rollout; end it first "
                    f"(kiln rollout {name} --off), and the server unloads it"
                )
            del served.versions[loaded.version]
            served.pinned.discard(loaded.version)
            await self._retire(loaded)

    async def production_references(self) -> list[str]:
        """Every registered model that has a `production` version."""
        references = []
        for name in await self.blocking(self.repository.model_names):
            try:
                await self.blocking(self.repository.resolve, parse_reference(name))
            except KilnError:
                log.warning("%s has no production version; not serving it", name)
                continue
            references.append(name)
        return references

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (registry, engine loading) on a control thread."""
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)

    # -- internals ------------------------------------------------------------------------------

    async def _swap(self, served: ServedModel, version: int) -> LoadedModel:
        old = served.default
        if old is not None and old.version == version:
            return old
        # Load and warm the new version BEFORE touching the old one. Until the new engine has
        # proven it runs, the old keeps serving every request: a slow load costs no latency
        # and a bad artifact costs no availability. Only then does the default move (one
        # assignment, atomic on the event loop), and the old version drains what it already
        # queued before its engine closes, so no request fails during the swap.
        new = served.versions.get(version) or await self._open(served.name, version)
        served.versions[version] = new
        routing = self.table.routing.get(served.name)
        if routing is not None and routing.target is new:
            # The rollout's version became the default (promoted during a canary): nothing is
            # left to compare, so stop routing now rather than at the next rollout poll.
            del self.table.routing[served.name]
        served.default = new
        served.failed_version, served.reason = None, ""
        if old is not None:
            log.info("%s now serves version %d (was %d)", served.name, version, old.version)
            # The old default stays while the rollout names it: after promoting the canary,
            # a rollback resumes the canary at once instead of loading it again.
            if old.version not in served.pinned and old.version != served.rollout_version:
                del served.versions[old.version]
                await self._retire(old)
        return new

    async def _open(self, name: str, version: int) -> LoadedModel:
        label = f"{name}:{version}"
        self._set_state(name, version, ModelState.LOADING)
        try:
            opened = await self.blocking(self.repository.open, name, version)
            description = describe(name, version, opened, self.settings)
            if self.settings.warmup:
                for feed in warmup_inputs(description):
                    await self.blocking(opened.engine.infer, feed)
        except BaseException:
            self._set_state(name, version, ModelState.UNAVAILABLE)
            raise
        statistics = ModelStatistics(name, version)
        metrics = self.metrics.bind(name, version)

        def executed(rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
            statistics.record_execution(rows, input_ns, infer_ns, output_ns)
            metrics.executed(rows, (input_ns + infer_ns + output_ns) / 1e9)

        loaded = LoadedModel(
            name=name,
            version=version,
            opened=opened,
            description=description,
            validator=RequestValidator(
                label,
                description.inputs,
                description.outputs,
                description.max_batch_size,
                allow_nonfinite=self.settings.allow_nonfinite,
            ),
            batcher=DynamicBatcher(
                opened.engine.infer,
                label=label,
                max_batch_size=description.max_batch_size,
                max_queue_delay_us=self.settings.max_queue_delay_us,
                max_queue_size=self.settings.max_queue_size,
                on_execution=executed,
                # GPU engines keep to their worker thread (their CUDA state lives there).
                inline_after_idle_us=self.settings.inline_idle_us if opened.device == "cpu" else 0,
            ),
            statistics=statistics,
            metrics=metrics,
        )
        log.info("loaded %s (%s on %s)", label, opened.kind, opened.device)
        self._set_state(name, version, ModelState.READY)
        return loaded

    async def _retire(self, loaded: LoadedModel) -> None:
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

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            for served in list(self.table.models.values()):
                if served.tracks_alias and served.default is not None:
                    try:
                        await self._follow(served)
                        await self._follow_rollout(served)
                    except Exception:  # a registry hiccup must not end the watcher
                        log.exception("watching %s failed; trying again next poll", served.name)

    async def _follow(self, served: ServedModel) -> None:
        try:
            version = await self.blocking(self.repository.resolve, served.reference)
        except KilnError as exc:
            log.warning("cannot resolve %s: %s", served.reference, exc)
            return
        current = served.default.version if served.default else None
        if version in (current, served.failed_version):
            return
        async with self._lock(served.name):
            if self.table.models.get(served.name) is not served or served.default is None:
                return  # unloaded or reloaded meanwhile
            try:
                await self._swap(served, version)
            except Exception as exc:
                served.failed_version = version
                served.reason = f"cannot serve {served.name}:{version}: {failure_reason(exc)}"
                log.error("%s moved to %d but stays on %d: %s", served.reference, version,
                          served.default.version, exc)  # fmt: skip

    async def _follow_rollout(self, served: ServedModel) -> None:
        try:
            state = await self.blocking(self.repository.rollout, served.name)
        except KilnError as exc:
            log.warning("cannot read the rollout of %s: %s", served.name, exc)
            return
        if self._settled(served, state):
            return
        async with self._lock(served.name):
            if self.table.models.get(served.name) is not served or served.default is None:
                return  # unloaded or reloaded meanwhile
            await self._apply_rollout(served, state)

    def _settled(self, served: ServedModel, state: RolloutState | None) -> bool:
        """True when the table already does what `state` asks (the common, lock-free case)."""
        wanted = _wanted(served, state)
        routing = self.table.routing.get(served.name)
        if wanted is None:
            kept = served.rollout_version == _kept(served, state)
            return routing is None and kept and not served.rollout_reason
        if wanted[2] == served.rollout_failed:
            return True
        return routing is not None and (routing.route, routing.percent,
                                        routing.target.version) == wanted  # fmt: skip

    async def _apply_rollout(self, served: ServedModel, state: RolloutState | None) -> None:
        name = served.name
        wanted = _wanted(served, state)
        if wanted is None:
            served.rollout_failed, served.rollout_reason = None, ""
            await self._end_rollout(served, keep=_kept(served, state))
            return
        assert state is not None
        route, percent, version = wanted
        if version == served.rollout_failed:
            return
        target = served.versions.get(version)
        if target is None:
            # Load and warm it BEFORE routing anything to it: until it has proven it runs,
            # the default answers every request, as during a hot swap.
            try:
                target = await self._open(name, version)
            except Exception as exc:
                served.rollout_failed = version
                served.rollout_reason = (
                    f"the {route} cannot load {name}:{version} ({name}@{state.alias}): "
                    f"{failure_reason(exc)}; "
                    f"version {served.default.version if served.default else '?'} answers "
                    f"every request"
                )
                log.error("%s: %s", name, served.rollout_reason)
                await self._end_rollout(served)  # an older rollout version is not the rollout
                return
            served.versions[version] = target
        previous = served.rollout_version
        self.table.routing[name] = Routing(route, target, percent)
        served.rollout_version = version
        served.rollout_failed, served.rollout_reason = None, ""
        log.info("%s: %s of %g%% of requests to version %d", name, route, percent, version)
        if previous is not None and previous != version:
            await self._release(served, previous)

    async def _end_rollout(self, served: ServedModel, keep: int | None = None) -> None:
        """Stop routing to the rollout's version, then drain and unload it if nothing else
        keeps it (the default, a pinned reference). `keep`: the rollout names the default,
        which stays marked as the rollout's version (see `_kept`)."""
        if self.table.routing.pop(served.name, None) is not None:
            log.info("%s: rollout routes nothing; the default answers every request", served.name)
        previous, served.rollout_version = served.rollout_version, keep
        if previous is not None and previous != keep:
            await self._release(served, previous)

    async def _release(self, served: ServedModel, version: int) -> None:
        loaded = served.versions.get(version)
        if loaded is None or loaded is served.default or version in served.pinned:
            return
        del served.versions[version]
        await self._retire(loaded)

    def _set_state(self, name: str, version: int, state: ModelState) -> None:
        self.metrics.state(name, version, _METRIC_STATES[state])
        for listener in self.listeners:
            listener(name, version, state)

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock


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


def _wanted(served: ServedModel, state: RolloutState | None) -> tuple[Route, float, int] | None:
    """(route, percent, version) a rollout asks of `served`; None when it routes nothing: off,
    its alias names no version, or that version is the default already."""
    if state is None or state.version is None or served.default is None:
        return None
    if state.version == served.default.version:
        return None
    return state.route, state.percent, state.version


def _kept(served: ServedModel, state: RolloutState | None) -> int | None:
    """The default's version when a running rollout names it (the candidate was promoted):
    nothing is routed, but should the default move away (a rollback), the version stays loaded
    and the rollout resumes without loading it again. None otherwise."""
    if state is None or served.default is None or state.version != served.default.version:
        return None
    return state.version


def describe(
    name: str, version: int, opened: OpenedEngine, settings: ServingSettings
) -> ModelDescription:
    """A version's metadata and configuration, from its engine's signature and the settings.

    The model batches when every input and output has a dynamic leading dimension; its
    max_batch_size is the setting, capped by what the engine accepts.
    """
    signature: Signature = opened.engine.signature
    specs = (*signature.inputs, *signature.outputs)
    batched = all(s.shape and s.shape[0] == DYNAMIC for s in specs)
    max_batch = 0
    if batched and settings.max_batch_size:
        max_batch = min(settings.max_batch_size, signature.max_batch or settings.max_batch_size)

    def spec(name: str, dtype: str, shape: tuple[int, ...]) -> TensorSpec:
        np_dtype: np.dtype[Any] = np.dtype(dtype)
        return TensorSpec(name, datatype_of(np_dtype), shape, np_dtype)

    return ModelDescription(
        name=name,
        version=version,
        versions=(version,),
        platform=PLATFORMS.get(opened.kind, opened.kind),
        backend="onnxruntime" if opened.kind == "onnx" else opened.kind,
        inputs=tuple(spec(s.name, s.dtype, s.shape) for s in signature.inputs),
        outputs=tuple(spec(s.name, s.dtype, s.shape) for s in signature.outputs),
        max_batch_size=max_batch,
        max_queue_delay_us=settings.max_queue_delay_us,
        max_queue_size=settings.max_queue_size,
        default_timeout_us=settings.default_timeout_us,
        instances=1,
    )


def warmup_inputs(description: ModelDescription) -> Sequence[dict[str, Any]]:
    """Zero inputs at batch 1 and at the maximum batch (numeric inputs only; none for BYTES)."""
    if any(s.dtype == np.dtype(object) for s in description.inputs):
        return []
    sizes = [1] if description.max_batch_size <= 1 else [1, description.max_batch_size]
    feeds = []
    for rows in sizes:
        feed = {}
        for s in description.inputs:
            shape = [1 if d == DYNAMIC else d for d in s.shape]
            if description.max_batch_size and shape:
                shape[0] = rows
            feed[s.name] = np.zeros(shape, dtype=s.dtype)
        feeds.append(feed)
    return feeds
