"""Shadow copies: a share of requests also runs on a second version, its answers only logged.

While a shadow rollout runs, the core answers every request from the default version and hands
the selected ones (`Routing.selects`) to `ShadowCopies.send`. The copy is queued on the shadow
version beside the client's request and shares its (read-only) input arrays; its answer or
failure reaches the shadow hook (route `shadow`, the same request id) from a done-callback,
never the client. A copy the shadow version refuses (queue full, inputs it does not accept) is
counted and logged, and the client's request goes on regardless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from kiln.errors import KilnError, RequestCancelled, quote
from kiln.serving.batcher import Tensors
from kiln.serving.failures import as_kiln_error
from kiln.serving.hooks import TrafficHook
from kiln.serving.messages import InferRequest, InferResponse, Timings, TrafficEvent
from kiln.serving.settings import ServingSettings
from kiln.serving.table import LoadedModel
from kiln.traffic import Route

log = logging.getLogger("kiln.serving")

Emit = Callable[[TrafficHook, TrafficEvent], None]
"""How the core calls a hook (it counts and logs the hook's own failures)."""


class ShadowCopies:
    """Runs shadow copies of requests and reports them to `hook`. See the module docstring.

    With no hook, copies still run (their version's statistics and metrics count them) but
    their answers go nowhere.
    """

    def __init__(self, settings: ServingSettings, hook: TrafficHook | None, emit: Emit) -> None:
        self.settings = settings
        self.hook = hook
        self._emit = emit
        self._failures = 0

    def send(self, target: LoadedModel, request: InferRequest, received: int) -> None:
        """Queue a copy of `request` on `target`; never raises."""
        try:
            rows = target.validator(request.inputs, request.outputs)
            future = target.batcher.submit(
                request.inputs, rows, request.timeout_us or self.settings.default_timeout_us
            )
        except KilnError as exc:
            self._failed(target, request, exc, received, "refused")
            return
        future.add_done_callback(functools.partial(self._done, target, request, received))

    def _done(
        self,
        target: LoadedModel,
        request: InferRequest,
        received: int,
        future: asyncio.Future[tuple[Tensors, Timings]],
    ) -> None:
        if future.cancelled():
            cancelled = RequestCancelled("the shadow copy was cancelled")
            self._failed(target, request, cancelled, received, "failed")
            return
        exc = future.exception()
        if exc is not None:
            what = f"the shadow copy of {quote(request.id)} on {target.label}"
            self._failed(target, request, as_kiln_error(exc, what), received, "failed")
            return
        outputs, timings = future.result()
        text_stats = None
        if target.text is not None:
            outputs, text_stats = target.text.split(outputs)
        if request.outputs:
            outputs = {name: outputs[name] for name in request.outputs}
        total = time.perf_counter_ns() - received
        target.metrics.shadowed("answered")
        target.statistics.record_success(total, timings)
        target.metrics.succeeded(total / 1e9, timings.queue_ns / 1e9)
        if self.hook is not None:
            response = InferResponse(
                request.model, str(target.version), request.id, outputs, Route.SHADOW, text_stats
            )
            event = TrafficEvent(
                request, response, None, timings, total, target.version, Route.SHADOW
            )
            self._emit(self.hook, event)

    def _failed(
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
        self._failures += 1
        if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
            log.warning("a shadow copy on %s failed (%d so far; clients are unaffected): %s",
                        target.label, self._failures, error.message)  # fmt: skip
        if self.hook is not None:
            event = TrafficEvent(request, None, error, None, total, target.version, Route.SHADOW)
            self._emit(self.hook, event)
