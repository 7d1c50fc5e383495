"""The serving core: the data plane every transport calls, with no transport in it.

`ServingCore` ties together the model table (`table`), the lifecycle that loads, unloads and
hot-swaps versions (`lifecycle`), one dynamic batcher per loaded version (`batcher`),
statistics, metrics, the traffic hook (`hooks`) and the feedback intake (`feedback`).
Transports convert their messages to `kiln.serving.messages` values, call one method here and
convert the result back. Every error raised to a transport is a `KilnError` (its `code` says
what kind); anything unexpected is logged with its traceback and surfaces as `InternalError`
(`failures`).

Canary and shadow: while a rollout runs (`ModelTable.routing`, kept by the lifecycle's
watcher), a request that names no version is routed by a hash of its id. Canary: the selected
share is answered by the second version (route `canary`). Shadow: production answers every
request; the selected share is also queued on the second version in the background, and its
answer (route `shadow`, same request id) goes only to the shadow hook (`shadow`). Requests that
name a version are never rerouted.

Threads: all methods run on the event loop; engine calls run on each batcher's worker thread,
registry calls and engine loading on a small control pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Sequence

from kiln.errors import (
    InvalidReference,
    KilnError,
    ModelControlDisabled,
    NotFound,
    RequestCancelled,
    ServerShuttingDown,
    Unavailable,
    quote,
)
from kiln.serving.failures import as_kiln_error
from kiln.serving.feedback import FeedbackIntake
from kiln.serving.hooks import FeedbackHook, TrafficHook
from kiln.serving.lifecycle import ModelLifecycle
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
from kiln.serving.shadow import ShadowCopies
from kiln.serving.statistics import ModelStatistics
from kiln.serving.table import LoadedModel, ModelState, ModelTable
from kiln.serving.versions import StateListener
from kiln.traffic import Route

log = logging.getLogger("kiln.serving")

MAX_REFERENCE_LENGTH = 160
"""Longer than any valid reference (a 64-character name, and a 64-character alias or an int64
version): load and unload refuse longer text before parsing it."""


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
        self.table = ModelTable()
        # Shadow copies' answers (and failures), route `shadow`, go to the traffic hook unless
        # another is given (the BentoML service logs its own rows, so it passes only this one).
        self._shadows = ShadowCopies(settings, shadow_hook or traffic_hook, self._emit)
        self._feedback = FeedbackIntake(self.table, settings, feedback_hook)
        self._routing = self.table.routing  # the same dict, read on every request
        self.lifecycle = ModelLifecycle(self.table, repository, settings, self.metrics)
        self._repository = repository
        self._started = False
        self._meant: set[str] = set()  # models started with: `ready` needs each of them
        self._refusing = False  # draining for shutdown: new inference requests are refused
        self._inflight = 0
        self._last_arrival_ns = 0
        self._hook_failures = 0
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
                "(KILN_SERVE_MODEL_CONTROL=true) or with a token (--token) to allow loading "
                "and unloading models"
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

    async def infer(self, request: InferRequest) -> InferResponse:  # noqa: PLR0912
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
                self._shadows.send(shadow, request, received)
            outputs, timings = await future
            text = loaded.text  # a text model's stage: its per-row counts leave the outputs
            outputs, text_stats = text.split(outputs) if text is not None else (outputs, None)
            if request.outputs:
                outputs = {name: outputs[name] for name in request.outputs}
            response = InferResponse(
                request.model, str(loaded.version), request.id, outputs, route, text_stats
            )
        except asyncio.CancelledError:
            self._failed(request, loaded, RequestCancelled("the client cancelled"), received, route)
            raise
        except Exception as exc:
            error = as_kiln_error(exc, f"request {quote(request.id)} for {quote(request.model)}")
            self._failed(request, loaded, error, received, route)
            if error is exc:
                raise
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
        See `FeedbackIntake.submit`."""
        return self._feedback.submit(items)

    # -- internals ------------------------------------------------------------------------------

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
