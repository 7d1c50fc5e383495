"""The serving core: the data plane every transport calls, with no transport in it.

`ServingCore` owns the model table, one dynamic batcher per loaded version, the alias watcher
that hot-swaps versions, statistics, metrics and the traffic and feedback hooks. Transports
convert their messages to `kiln.serving.messages` values, call one method here and convert the
result back. Every error raised to a transport is a `KilnError` (its `code` says what kind);
anything unexpected is logged here with its traceback and surfaces as `InternalError`.

Threads: all methods run on the event loop; engine calls run on each batcher's worker thread,
registry calls and engine loading on a small control pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kiln.errors import ErrorCode, FailedPrecondition, KilnError, did_you_mean
from kiln.registry import parse_reference
from kiln.registry.references import format_version_ranges
from kiln.serving.batcher import DynamicBatcher
from kiln.serving.errors import (
    EngineFailed,
    FeedbackDisabled,
    InferRequestInvalid,
    InternalError,
    ModelNotReady,
    ModelNotServed,
    RequestCancelled,
    ServerShuttingDown,
    VersionNotServed,
)
from kiln.serving.messages import (
    Feedback,
    IndexEntry,
    InferRequest,
    InferResponse,
    ModelDescription,
    Timings,
    TrafficEvent,
)
from kiln.serving.metrics import ServingMetrics
from kiln.serving.repository import ModelRepository
from kiln.serving.settings import ServingSettings
from kiln.serving.statistics import ModelStatistics
from kiln.serving.table import (
    LoadedModel,
    ModelState,
    ServedModel,
    describe,
    warmup_inputs,
)
from kiln.serving.validation import RequestValidator
from kiln_engines import EngineError

log = logging.getLogger("kiln.serving")

TrafficHook = Callable[[TrafficEvent], None]
"""Called on the event loop once per inference request, after the answer is computed and
before it is sent. Must return quickly (buffer, never write to disk inline); exceptions are
logged and swallowed: logging traffic never fails a request."""

FeedbackHook = Callable[[Sequence[Feedback]], None]
"""Called on the event loop with the accepted labels of one feedback call. Must return quickly;
an exception fails that call (the client may retry)."""

StateListener = Callable[[str, int, ModelState], None]
"""Called on the event loop when a version's state changes: (model, version, state)."""

T = TypeVar("T")


class ServingCore:
    """The model table and everything that acts on it. See the module docstring."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServingSettings,
        *,
        metrics: ServingMetrics | None = None,
        traffic_hook: TrafficHook | None = None,
        feedback_hook: FeedbackHook | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ServingMetrics()
        self.traffic_hook = traffic_hook
        self.feedback_hook = feedback_hook
        self._repository = repository
        self._models: dict[str, ServedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[StateListener] = []
        self._control = ThreadPoolExecutor(2, thread_name_prefix="kiln-control")
        self._watcher: asyncio.Task[None] | None = None
        self._started = False
        self._refusing = False  # draining for shutdown: new inference requests are refused
        self._stopping = False
        self._inflight = 0
        self._last_arrival_ns = 0
        self._hook_failures = 0
        self._id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._ids = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, references: Sequence[str] = ()) -> None:
        """Load every reference (all models' `production` when none), then watch aliases.

        Raises the first load failure: a server that cannot serve what it was asked to should
        not report ready.
        """
        if not references:
            references = await self._production_references()
        for reference in references:
            await self.load(reference)
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name="kiln-alias-watcher"
        )
        self._started = True

    async def stop(self) -> None:
        """Refuse new requests, let queued and running ones finish, close every engine."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for name in list(self._models):
            async with self._lock(name):
                served = self._models.pop(name, None)
                if served is not None:
                    await asyncio.gather(*(self._retire(m) for m in served.versions.values()))
        self._control.shutdown(wait=False)

    def refuse_new(self) -> None:
        """Start draining for shutdown: report not ready, refuse new inference (UNAVAILABLE)."""
        self._refusing = True

    async def drained(self, quiet_s: float = 0.1, timeout_s: float = 30.0) -> None:
        """Wait until no inference is in flight and none has arrived for `quiet_s` seconds.

        Requests a transport received but had not dispatched yet still arrive after
        `refuse_new`; waiting for quiet lets them be refused with a clear status instead of
        being cut off when the transport stops.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            quiet_ns = time.perf_counter_ns() - self._last_arrival_ns
            if self._inflight == 0 and quiet_ns >= quiet_s * 1e9:
                return
            await asyncio.sleep(min(quiet_s, 0.02))

    def add_listener(self, listener: StateListener) -> None:
        """Be told of every version state change from now on (and of the current states)."""
        self._listeners.append(listener)
        for served in self._models.values():
            for loaded in served.versions.values():
                listener(loaded.name, loaded.version, loaded.state)

    @property
    def live(self) -> bool:
        return not self._stopping

    @property
    def ready(self) -> bool:
        """Started, not draining, and every served model has a ready default version."""
        return (
            self._started
            and not self._refusing
            and not self._stopping
            and all(
                s.default is not None and s.default.state is ModelState.READY
                for s in self._models.values()
            )
        )

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run one request through its model's batcher and return the outputs it asked for.

        Raises `KilnError`s only: `ModelNotServed`/`VersionNotServed` (NOT_FOUND),
        `InferRequestInvalid` (INVALID_ARGUMENT), `QueueFull` (RESOURCE_EXHAUSTED),
        `RequestTimedOut`/`ModelNotReady`/`ServerShuttingDown` (UNAVAILABLE), engine errors with
        their own code, `InternalError` for anything unexpected.
        """
        received = request.received_ns or time.perf_counter_ns()
        self._last_arrival_ns = received
        if not request.id:
            # A per-server random prefix and a counter: unique across restarts and replicas,
            # and far cheaper than uuid4 per request (os.urandom is a syscall).
            request.id = f"{self._id_prefix}{next(self._ids):x}"
        self._inflight += 1
        try:
            return await self._infer(request, received)
        finally:
            self._inflight -= 1

    async def _infer(self, request: InferRequest, received: int) -> InferResponse:
        loaded: LoadedModel | None = None
        timings: Timings | None = None
        try:
            if self._refusing:
                raise ServerShuttingDown(
                    "the server is shutting down and accepts no new requests; send to another "
                    "replica or retry when it is back"
                )
            loaded = self.resolve(request.model, request.version)
            rows = loaded.validator(request.inputs, request.outputs)
            future = loaded.batcher.submit(
                request.inputs, rows, request.timeout_us or self.settings.default_timeout_us
            )
            outputs, timings = await future
            if request.outputs:
                outputs = {name: outputs[name] for name in request.outputs}
            response = InferResponse(request.model, str(loaded.version), request.id, outputs)
        except asyncio.CancelledError:
            self._failed(request, loaded, RequestCancelled("the client cancelled"), received)
            raise
        except KilnError as exc:
            self._failed(request, loaded, exc, received)
            raise
        except EngineError as exc:
            failure = EngineFailed(exc.message, _code(exc.code))
            self._failed(request, loaded, failure, received)
            raise failure from exc
        except Exception as exc:
            log.exception("inference on %s failed unexpectedly", request.model)
            error = InternalError(f"internal error serving request {request.id}")
            self._failed(request, loaded, error, received)
            raise error from exc
        total = time.perf_counter_ns() - received
        loaded.statistics.record_success(total, timings)
        loaded.metrics.succeeded(total / 1e9, timings.queue_ns / 1e9)
        if self.traffic_hook is not None:
            self._emit(TrafficEvent(request, response, None, timings, total, loaded.version))
        return response

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The loaded version a request for (`name`, `version`) goes to; "" is the default."""
        served = self._models.get(name)
        if served is None:
            if self._stopping:
                raise ServerShuttingDown("the server is shutting down; send to another replica")
            served_names = ", ".join(sorted(self._models)) or "none"
            raise ModelNotServed(
                f"model '{name}' is not served here{did_you_mean(name, self._models)}; "
                f"served models: {served_names} (load one with RepositoryModelLoad)"
            )
        if not version:
            loaded = served.default
            if loaded is None:
                raise ModelNotReady(f"model '{name}' is loading; retry shortly")
        else:
            loaded = served.versions.get(_version_number(name, version))
            if loaded is None:
                loaded_versions = format_version_ranges(list(served.versions)) or "none"
                raise VersionNotServed(
                    f"model '{name}' version {version} is not loaded; loaded versions: "
                    f"{loaded_versions} (load it with RepositoryModelLoad '{name}:{version}')"
                )
        if loaded.state is not ModelState.READY:
            raise ModelNotReady(f"model {loaded.label} is {loaded.state.lower()}; retry shortly")
        return loaded

    # -- metadata and statistics ---------------------------------------------------------------

    def describe(self, name: str, version: str = "") -> ModelDescription:
        """Metadata and configuration of the version a request would reach."""
        loaded = self.resolve(name, version)
        versions = tuple(sorted(self._models[name].versions))
        return dataclasses.replace(loaded.description, versions=versions)

    def loaded_models(self) -> list[LoadedModel]:
        """Every loaded version, by model name and version."""
        return [m for s in self._sorted() for m in _by_version(s)]

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except KilnError:
            return False
        return True

    def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Statistics of every loaded version (of `name`; of one version when given)."""
        if not name:
            return [m.statistics for s in self._sorted() for m in _by_version(s)]
        served = self._models.get(name)
        if served is None:
            self.resolve(name)  # raises ModelNotServed with the message
            return []
        if version:
            loaded = served.versions.get(_version_number(name, version))
            if loaded is None:
                self.resolve(name, version)  # raises VersionNotServed
            return [loaded.statistics] if loaded else []
        return [m.statistics for m in _by_version(served)]

    async def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every registered model: its loaded versions with their state, or UNAVAILABLE."""
        names = set(await self._blocking(self._repository.model_names)) | set(self._models)
        entries: list[IndexEntry] = []
        for name in sorted(names):
            served = self._models.get(name)
            if served is None or not served.versions:
                state = ModelState.LOADING if served else ModelState.UNAVAILABLE
                reason = served.reason if served else "not loaded"
                entries.append(IndexEntry(name, "", state.value, reason))
                continue
            for loaded in _by_version(served):
                # A failed swap leaves the default serving; say why it was not replaced.
                reason = served.reason if loaded is served.default else ""
                entries.append(IndexEntry(name, str(loaded.version), loaded.state.value, reason))
        if ready_only:
            entries = [e for e in entries if e.state == ModelState.READY]
        return entries

    # -- feedback -------------------------------------------------------------------------------

    def feedback(self, items: Sequence[Feedback]) -> list[tuple[int, str]]:
        """Hand valid labels to the feedback hook; returns (index, reason) of rejected ones."""
        if self.feedback_hook is None:
            raise FeedbackDisabled(
                "this server has no feedback sink; start it with traffic logging enabled"
            )
        rejected: list[tuple[int, str]] = []
        accepted: list[Feedback] = []
        for index, item in enumerate(items):
            if not item.request_id:
                rejected.append((index, "request_id is empty: give the `id` of the response"))
            elif item.label < 0:
                rejected.append((index, f"label {item.label} is negative: give a class index"))
            else:
                accepted.append(item)
        if accepted:
            self.feedback_hook(accepted)
        return rejected

    # -- repository control ---------------------------------------------------------------------

    async def load(self, text: str) -> LoadedModel:
        """Serve `text` (`digits`, `digits@candidate`, `digits:3`); returns the loaded version.

        A new model's first reference sets its default version. For a served model, an alias
        reference becomes the one its default follows (swapping now if it points elsewhere);
        a version reference loads that version beside the default.
        """
        if self._stopping:
            raise ServerShuttingDown("the server is shutting down")
        reference = parse_reference(text)
        async with self._lock(reference.name):
            version = await self._blocking(self._repository.resolve, reference)
            served = self._models.get(reference.name)
            if served is None:
                served = self._models[reference.name] = ServedModel(reference.name, reference)
                try:
                    loaded = await self._open(reference.name, version)
                except BaseException:
                    del self._models[reference.name]
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
                f"unload takes a model name or NAME:VERSION, not an alias ('{text}')"
            )
        async with self._lock(name):
            served = self._models.get(name)
            if served is None:
                self.resolve(name)  # raises ModelNotServed
                return
            if not number:
                del self._models[name]
                await asyncio.gather(*(self._retire(m) for m in served.versions.values()))
                return
            loaded = served.versions.get(_version_number(name, number))
            if loaded is None:
                self.resolve(name, number)  # raises VersionNotServed
                return
            if loaded is served.default:
                raise FailedPrecondition(
                    f"{loaded.label} is the version '{name}' serves by default; unload '{name}' "
                    f"to stop serving the model, or load another default first"
                )
            del served.versions[loaded.version]
            served.pinned.discard(loaded.version)
            await self._retire(loaded)

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
        served.default = new
        served.failed_version, served.reason = None, ""
        if old is not None:
            log.info("%s now serves version %d (was %d)", served.name, version, old.version)
            if old.version not in served.pinned:
                del served.versions[old.version]
                await self._retire(old)
        return new

    async def _open(self, name: str, version: int) -> LoadedModel:
        label = f"{name}:{version}"
        self._notify(name, version, ModelState.LOADING)
        self.metrics.state(name, version, "loading")
        try:
            opened = await self._blocking(self._repository.open, name, version)
            description = describe(name, version, opened, self.settings)
            if self.settings.warmup:
                for feed in warmup_inputs(description):
                    await self._blocking(opened.engine.infer, feed)
        except BaseException:
            self._notify(name, version, ModelState.UNAVAILABLE)
            self.metrics.state(name, version, "unloaded")
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
                label, description.inputs, description.outputs, description.max_batch_size
            ),
            batcher=DynamicBatcher(
                opened.engine.infer,
                label=label,
                max_batch_size=description.max_batch_size,
                max_queue_delay_us=self.settings.max_queue_delay_us,
                max_queue_size=self.settings.max_queue_size,
                on_execution=executed,
            ),
            statistics=statistics,
            metrics=metrics,
        )
        log.info("loaded %s (%s on %s)", label, opened.kind, opened.device)
        self._notify(name, version, ModelState.READY)
        self.metrics.state(name, version, "ready")
        return loaded

    async def _retire(self, loaded: LoadedModel) -> None:
        loaded.state = ModelState.UNLOADING
        self._notify(loaded.name, loaded.version, ModelState.UNLOADING)
        self.metrics.state(loaded.name, loaded.version, "unloading")
        try:
            await asyncio.wait_for(loaded.batcher.close(), self.settings.drain_timeout_s or None)
        except TimeoutError:
            log.warning("%s did not drain in %.0f s", loaded.label, self.settings.drain_timeout_s)
        await self._blocking(loaded.opened.engine.close)
        loaded.state = ModelState.UNAVAILABLE
        self._notify(loaded.name, loaded.version, ModelState.UNAVAILABLE)
        self.metrics.state(loaded.name, loaded.version, "unloaded")
        log.info("unloaded %s", loaded.label)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            for served in list(self._models.values()):
                if served.tracks_alias and served.default is not None:
                    await self._follow(served)

    async def _follow(self, served: ServedModel) -> None:
        try:
            version = await self._blocking(self._repository.resolve, served.reference)
        except KilnError as exc:
            log.warning("cannot resolve %s: %s", served.reference, exc)
            return
        current = served.default.version if served.default else None
        if version in (current, served.failed_version):
            return
        async with self._lock(served.name):
            if self._models.get(served.name) is not served or served.default is None:
                return  # unloaded or reloaded meanwhile
            try:
                await self._swap(served, version)
            except Exception as exc:
                served.failed_version = version
                served.reason = f"cannot serve {served.name}:{version}: {exc}"
                log.error("%s moved to %d but stays on %d: %s", served.reference, version,
                          served.default.version, exc)  # fmt: skip

    async def _production_references(self) -> list[str]:
        names = await self._blocking(self._repository.model_names)
        references = []
        for name in names:
            try:
                await self._blocking(self._repository.resolve, parse_reference(name))
            except KilnError:
                log.warning("%s has no production version; not serving it", name)
                continue
            references.append(name)
        return references

    def _failed(
        self, request: InferRequest, loaded: LoadedModel | None, error: KilnError, received: int
    ) -> None:
        total = time.perf_counter_ns() - received
        if loaded is None:
            self.metrics.failed_unresolved(error.code.value)
        else:
            loaded.statistics.record_failure(total)
            loaded.metrics.failed(error.code.value)
        if self.traffic_hook is not None:
            version = loaded.version if loaded else None
            self._emit(TrafficEvent(request, None, error, None, total, version))

    def _emit(self, event: TrafficEvent) -> None:
        assert self.traffic_hook is not None
        try:
            self.traffic_hook(event)
        except Exception:
            self._hook_failures += 1
            if self._hook_failures in (1, 10, 100) or self._hook_failures % 1000 == 0:
                log.exception("the traffic hook failed (%d times so far)", self._hook_failures)

    def _notify(self, name: str, version: int, state: ModelState) -> None:
        for listener in self._listeners:
            listener(name, version, state)

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _sorted(self) -> Iterable[ServedModel]:
        return (self._models[name] for name in sorted(self._models))

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)


def _by_version(served: ServedModel) -> list[LoadedModel]:
    return [served.versions[v] for v in sorted(served.versions)]


def _version_number(name: str, version: str) -> int:
    if not version.isascii() or not version.isdigit():
        raise VersionNotServed(
            f"model '{name}' has no version '{version}': versions are positive integers"
        )
    return int(version)


def _code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL
