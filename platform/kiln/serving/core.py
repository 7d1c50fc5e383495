"""The serving core: the data plane every transport calls, with no transport in it.

`ServingCore` ties together the model table (`table`), the lifecycle that loads, unloads and
hot-swaps versions (`lifecycle`), one dynamic batcher per loaded version (`batcher`),
statistics, metrics and the traffic and feedback hooks. Transports convert their messages to
`kiln.serving.messages` values, call one method here and convert the result back. Every error
raised to a transport is a `KilnError` (its `code` says what kind); anything unexpected is
logged here with its traceback and surfaces as `InternalError`.

Canary and shadow: while a rollout runs (`ModelTable.routing`, kept by the lifecycle's
watcher), a request that names no version is routed by a hash of its id. Canary: the selected
share is answered by the second version (route `canary`). Shadow: production answers every
request; the selected share is also queued on the second version in the background, and its
answer (route `shadow`, same request id) goes only to the shadow hook. Requests that name a
version are never rerouted.

Threads: all methods run on the event loop; engine calls run on each batcher's worker thread,
registry calls and engine loading on a small control pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence

from kiln.errors import (
    EngineFailed,
    ErrorCode,
    FeedbackDisabled,
    FeedbackRejected,
    InternalError,
    InvalidReference,
    KilnError,
    ModelControlDisabled,
    NotFound,
    RequestCancelled,
    ServerShuttingDown,
    Unavailable,
    quote,
)
from kiln.serving.batcher import Tensors
from kiln.serving.lifecycle import ModelLifecycle, StateListener
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
from kiln.serving.table import LoadedModel, ModelState, ModelTable
from kiln.traffic import Route
from kiln.traffic.labels import label_problem
from kiln_engines import EngineError

log = logging.getLogger("kiln.serving")

TrafficHook = Callable[[TrafficEvent], None]
"""Called on the event loop once per inference request for a served model, after the answer
is computed and before it is sent. Must return quickly (buffer, never write to disk inline);
exceptions are logged and swallowed: logging traffic never fails a request. Requests naming a
model that is not served never reach it (they are counted in the metrics only): a client must
not be able to create storage by naming models."""

MAX_REFERENCE_LENGTH = 160
"""Longer than any valid reference (a 64-character name, and a 64-character alias or an int64
version): load and unload refuse longer text before parsing it."""

FeedbackHook = Callable[[Sequence[Feedback]], None]
"""Called on the event loop with the accepted labels of one feedback call. Must return quickly,
and keep all of them or none: it raises (`FeedbackBufferFull` when its buffer is full) to fail
the whole call, which the client retries."""


class ServingCore:
    """The data plane over the model table. See the module docstring."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServingSettings,
        *,
        metrics: ServingMetrics | None = None,
        traffic_hook: TrafficHook | None = None,
        feedback_hook: FeedbackHook | None = None,
        shadow_hook: TrafficHook | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ServingMetrics()
        self.traffic_hook = traffic_hook
        self.feedback_hook = feedback_hook
        self.shadow_hook = shadow_hook or traffic_hook
        """Receives the answers (and failures) of shadow copies, route `shadow`: the traffic
        hook unless another is given (the BentoML service logs its own rows, so it passes only
        this one). With neither, shadow copies still run (their version's statistics and
        metrics count them) but their answers go nowhere."""
        self.table = ModelTable()
        self._routing = self.table.routing  # the same dict, read on every request
        self.lifecycle = ModelLifecycle(self.table, repository, settings, self.metrics)
        self._repository = repository
        self._started = False
        self._meant: set[str] = set()  # models started with: `ready` needs each of them
        self._refusing = False  # draining for shutdown: new inference requests are refused
        self._inflight = 0
        self._last_arrival_ns = 0
        self._hook_failures = 0
        self._shadow_failures = 0
        # Request ids: a per-server random prefix and a counter. Unique across restarts and
        # replicas, and far cheaper than uuid4 per request (os.urandom is a system call).
        self._id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._ids = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, references: Sequence[str] = ()) -> None:
        """Load every reference (all models' `production` when none), then watch aliases.

        Raises the first load failure: a server that cannot serve what it was asked to should
        not report ready. The models loaded here are the ones it is meant to serve: while one
        of them has no ready default version, `ready` is False.
        """
        for reference in references or await self.lifecycle.production_references():
            loaded = await self.lifecycle.load(reference)
            self._meant.add(loaded.name)
        self.lifecycle.watch()
        self._started = True

    async def stop(self) -> None:
        """Refuse new requests, let queued and running ones finish, close every engine."""
        self._refusing = True
        await self.lifecycle.stop()

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
        self.lifecycle.listeners.append(listener)
        for loaded in self.table.loaded():
            listener(loaded.name, loaded.version, loaded.state)

    async def load(self, reference: str) -> LoadedModel:
        """Serve a reference (`digits`, `digits@candidate`, `digits:3`); see `ModelLifecycle`.

        Model control: `ModelControlDisabled` unless the settings enable it.
        """
        self._check_model_control("load", reference)
        return await self.lifecycle.load(reference)

    async def unload(self, reference: str) -> None:
        """Stop serving a model (`digits`) or one version (`digits:3`), draining first.

        Model control: `ModelControlDisabled` unless the settings enable it. Unloading a model
        the server was started with leaves it not ready until the model is loaded again.
        """
        self._check_model_control("unload", reference)
        await self.lifecycle.unload(reference)

    def _check_model_control(self, action: str, reference: str) -> None:
        if not self.settings.model_control_enabled:
            raise ModelControlDisabled(
                f"model control is off on this server, so it cannot {action} models: it serves "
                "what it was started with. Start it with `kiln serve --model-control` "
                "(KILN_SERVE_MODEL_CONTROL=true) or with a token (--token) to allow "
                "RepositoryModelLoad/Unload"
            )
        if len(reference) > MAX_REFERENCE_LENGTH:
            raise InvalidReference(
                f"reference {quote(reference)} is too long to name a model: use NAME, "
                "NAME:VERSION or NAME@ALIAS (names and aliases have at most 64 characters)"
            )

    @property
    def live(self) -> bool:
        return not self.lifecycle.stopping

    @property
    def ready(self) -> bool:
        """Started, not draining, every model it was started with is served, and every served
        model has a ready default version."""
        models = self.table.models
        return (
            self._started
            and not self._refusing
            and all(name in models for name in self._meant)
            and all(
                s.default is not None and s.default.state is ModelState.READY for s in self.table
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
            request.id = f"{self._id_prefix}{next(self._ids):x}"
        loaded: LoadedModel | None = None
        timings: Timings | None = None
        route = Route.PRIMARY
        self._inflight += 1  # one coroutine per request, no helper: this runs for every request
        try:
            if self._refusing:
                raise ServerShuttingDown(
                    "the server is shutting down and accepts no new requests; send to another "
                    "replica or retry when it is back"
                )
            # Resolving and queueing happen in one synchronous step: see `table`.
            loaded = self.table.resolve(request.model, request.version)
            shadow: LoadedModel | None = None
            if self._routing and not request.version:  # empty unless a rollout runs
                routing = self._routing.get(request.model)
                if routing is not None and routing.selects(request.id):
                    if routing.route is Route.CANARY:
                        loaded, route = routing.target, Route.CANARY
                    else:
                        shadow = routing.target
            rows = loaded.validator(request.inputs, request.outputs)
            future = loaded.batcher.submit(
                request.inputs, rows, request.timeout_us or self.settings.default_timeout_us
            )
            if shadow is not None:
                self._shadow(shadow, request, received)
            outputs, timings = await future
            if request.outputs:
                outputs = {name: outputs[name] for name in request.outputs}
            response = InferResponse(request.model, str(loaded.version), request.id, outputs, route)
        except asyncio.CancelledError:
            failure: KilnError = RequestCancelled("the client cancelled")
            self._failed(request, loaded, failure, received, route)
            raise
        except KilnError as exc:
            self._failed(request, loaded, exc, received, route)
            raise
        except EngineError as exc:
            failure = EngineFailed(exc.message, _code(exc.code))
            self._failed(request, loaded, failure, received, route)
            raise failure from exc
        except Exception as exc:
            log.exception("inference on %s failed unexpectedly", quote(request.model))
            error = InternalError(f"internal error serving request {quote(request.id)}")
            self._failed(request, loaded, error, received, route)
            raise error from exc
        else:
            total = time.perf_counter_ns() - received
            loaded.statistics.record_success(total, timings)
            loaded.metrics.succeeded(total / 1e9, timings.queue_ns / 1e9)
            if self.traffic_hook is not None:
                self._emit(
                    self.traffic_hook,
                    TrafficEvent(request, response, None, timings, total, loaded.version, route),
                )
            return response
        finally:
            self._inflight -= 1

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The loaded version a request for (`name`, `version`) goes to; "" is the default."""
        return self.table.resolve(name, version)

    # -- metadata and statistics ---------------------------------------------------------------

    def describe(self, name: str, version: str = "") -> ModelDescription:
        """Metadata and configuration of the version a request would reach."""
        loaded = self.table.resolve(name, version)
        versions = tuple(sorted(self.table.models[name].versions))
        return dataclasses.replace(loaded.description, versions=versions)

    def loaded_models(self) -> list[LoadedModel]:
        """Every loaded version, by model name and version."""
        return self.table.loaded()

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether requests for (`name`, `version`) are answered now. False for a model or
        version that is not served or not ready; `InvalidArgument` for a malformed version."""
        try:
            self.table.resolve(name, version)
        except (NotFound, Unavailable):
            return False
        return True

    def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Statistics of every loaded version (of `name`; of one version when given)."""
        if not name:
            return [m.statistics for m in self.table.loaded()]
        if version:
            return [self.table.version(name, version).statistics]
        return [m.statistics for m in self.table.served(name).by_version()]

    async def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every registered model: its loaded versions with their state, or UNAVAILABLE."""
        registered = await self.lifecycle.blocking(self._repository.model_names)
        entries: list[IndexEntry] = []
        for name in sorted(set(registered) | set(self.table.models)):
            served = self.table.models.get(name)
            if served is None or not served.versions:
                state = ModelState.LOADING if served else ModelState.UNAVAILABLE
                reason = served.reason if served else "not loaded"
                entries.append(IndexEntry(name, "", state.value, reason))
                continue
            routing = self.table.routing.get(name)
            for loaded in served.by_version():
                if loaded is served.default:
                    # A failed swap or rollout leaves the default serving; say why.
                    reason = "; ".join(r for r in (served.reason, served.rollout_reason) if r)
                elif routing is not None and loaded is routing.target:
                    reason = f"{routing.route} of {routing.percent:g}% of requests"
                else:
                    reason = ""
                entries.append(IndexEntry(name, str(loaded.version), loaded.state.value, reason))
        if ready_only:
            entries = [e for e in entries if e.state == ModelState.READY]
        return entries

    # -- feedback -------------------------------------------------------------------------------

    def feedback(self, items: Sequence[Feedback]) -> list[tuple[int, str]]:
        """Hand valid labels to the feedback hook; returns (index, reason) of rejected ones.

        A label is checked against the classes of the model it names (of the served models
        when it names none): out of range is refused here, per item, with the valid range.
        Accepted items are kept all together or not at all: `FeedbackBufferFull`
        (RESOURCE_EXHAUSTED) when the store cannot take them now, so nothing acknowledged is
        ever dropped. More than `max_feedback_items` in one call is refused as a whole.
        Every refused item is listed with its reason; past the first `FULL_REASONS` refused,
        an item with the same problem as an earlier one says "same problem as item N", so that
        refusing every item of a call stays a small answer (about 25 bytes an item).
        """
        if self.feedback_hook is None:
            raise FeedbackDisabled(
                "this server has no feedback sink; start it with traffic logging enabled"
            )
        limit = self.settings.max_feedback_items
        if len(items) > limit:
            raise FeedbackRejected(
                f"{len(items)} feedback items in one call; at most {limit} are taken at once: "
                "split them into several calls"
            )
        rejected: list[tuple[int, str]] = []
        accepted: list[Feedback] = []
        classes: dict[str, int | None] = {}
        for index, item in enumerate(items):
            if not item.request_id:
                rejected.append((index, "request_id is empty: give the `id` of the response"))
                continue
            if item.model not in classes:
                classes[item.model] = self._num_classes(item.model)
            problem = label_problem(item.label, classes[item.model])
            if problem:
                rejected.append((index, problem))
            else:
                accepted.append(item)
        if accepted:
            self.feedback_hook(accepted)
        return _summarised(rejected)

    def _num_classes(self, model: str) -> int | None:
        """Classes of `model`'s loaded versions (of every served model when `model` is ""):
        the widest output row among them; None when nothing loaded says."""
        if model:
            served = self.table.models.get(model)
            loaded = served.by_version() if served else []
        else:
            loaded = self.table.loaded()
        widths = [
            m.description.outputs[0].shape[-1]
            for m in loaded
            if m.description.outputs and len(m.description.outputs[0].shape) > 1
        ]
        return max(widths) if widths and min(widths) > 0 else None

    # -- internals ------------------------------------------------------------------------------

    def _shadow(self, target: LoadedModel, request: InferRequest, received: int) -> None:
        """Queue a copy of `request` on the shadow version; never raises.

        The copy shares the request's (read-only) input arrays. Its answer or failure reaches
        the shadow hook from a done-callback; a refusal (queue full, inputs the shadow version
        does not accept) is counted and logged, and the client's request goes on regardless.
        """
        try:
            rows = target.validator(request.inputs, request.outputs)
            future = target.batcher.submit(
                request.inputs, rows, request.timeout_us or self.settings.default_timeout_us
            )
        except KilnError as exc:
            self._shadow_failed(target, request, exc, received, "refused")
            return
        future.add_done_callback(functools.partial(self._shadow_done, target, request, received))

    def _shadow_done(
        self,
        target: LoadedModel,
        request: InferRequest,
        received: int,
        future: asyncio.Future[tuple[Tensors, Timings]],
    ) -> None:
        if future.cancelled():
            cancelled = RequestCancelled("the shadow copy was cancelled")
            self._shadow_failed(target, request, cancelled, received, "failed")
            return
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, EngineError):
                error: KilnError = EngineFailed(exc.message, _code(exc.code))
            elif isinstance(exc, KilnError):
                error = exc
            else:
                shown = quote(request.id)
                log.error("shadow copy of %s on %s failed", shown, target.label, exc_info=exc)
                error = InternalError(f"internal error in the shadow copy of {shown}")
            self._shadow_failed(target, request, error, received, "failed")
            return
        outputs, timings = future.result()
        if request.outputs:
            outputs = {name: outputs[name] for name in request.outputs}
        total = time.perf_counter_ns() - received
        target.metrics.shadowed("answered")
        target.statistics.record_success(total, timings)
        target.metrics.succeeded(total / 1e9, timings.queue_ns / 1e9)
        if self.shadow_hook is not None:
            response = InferResponse(
                request.model, str(target.version), request.id, outputs, Route.SHADOW
            )
            event = TrafficEvent(
                request, response, None, timings, total, target.version, Route.SHADOW
            )
            self._emit(self.shadow_hook, event)

    def _shadow_failed(
        self,
        target: LoadedModel,
        request: InferRequest,
        error: KilnError,
        received: int,
        outcome: str,
    ) -> None:
        total = time.perf_counter_ns() - received
        target.metrics.shadowed(outcome)
        target.statistics.record_failure(total)
        target.metrics.failed(error.code.value)
        self._shadow_failures += 1
        if self._shadow_failures in (1, 10, 100) or self._shadow_failures % 1000 == 0:
            log.warning("a shadow copy on %s failed (%d so far; clients are unaffected): %s",
                        target.label, self._shadow_failures, error.message)  # fmt: skip
        if self.shadow_hook is not None:
            event = TrafficEvent(request, None, error, None, total, target.version, Route.SHADOW)
            self._emit(self.shadow_hook, event)

    def _failed(
        self,
        request: InferRequest,
        loaded: LoadedModel | None,
        error: KilnError,
        received: int,
        route: Route = Route.PRIMARY,
    ) -> None:
        total = time.perf_counter_ns() - received
        if loaded is None:
            self.metrics.failed_unresolved(error.code.value)
        else:
            loaded.statistics.record_failure(total)
            loaded.metrics.failed(error.code.value)
        # Only served models get rows: a client naming random models must not create a
        # directory per name (the metrics count those requests, under one series).
        served = loaded is not None or request.model in self.table.models
        if self.traffic_hook is not None and served:
            version = loaded.version if loaded else None
            event = TrafficEvent(request, None, error, None, total, version, route)
            self._emit(self.traffic_hook, event)

    def _emit(self, hook: TrafficHook, event: TrafficEvent) -> None:
        try:
            hook(event)
        except Exception:
            self._hook_failures += 1
            if self._hook_failures in (1, 10, 100) or self._hook_failures % 1000 == 0:
                log.exception("the traffic hook failed (%d times so far)", self._hook_failures)


FULL_REASONS = 100
"""Refused feedback items of one call that get their full reason whatever the others'."""

_NUMBER = re.compile(r"-?\d+")


def _summarised(rejected: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """`rejected` with the reason of each item past the first `FULL_REASONS` that has the
    same problem as an earlier one (the same reason but for the label's value) shortened to
    "same problem as item N"."""
    if len(rejected) <= FULL_REASONS:
        return rejected
    first: dict[str, int] = {}
    summary = []
    for position, (index, reason) in enumerate(rejected):
        earlier = first.setdefault(_NUMBER.sub("N", reason, count=1), index)
        if position < FULL_REASONS or earlier == index:
            summary.append((index, reason))
        else:
            summary.append((index, f"same problem as item {earlier}"))
    return summary


def _code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL
