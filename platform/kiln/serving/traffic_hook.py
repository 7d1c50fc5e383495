"""The serving core's traffic and feedback hooks, writing to `kiln.traffic`.

`TrafficSink` turns each `TrafficEvent` into a `TrafficRecord` (attribute copies only: the
tensors are converted later on the writer thread) and hands labels to the feedback store.
A server plugs it in and closes it after draining::

    sink = TrafficSink(kiln_settings.home)   # `kiln serve --no-traffic-log` creates none
    core = ServingCore(repo, settings, traffic_hook=sink.on_request,
                       feedback_hook=sink.on_feedback)
    metrics.registry.register(sink.collector)
    ...
    await server.stop()        # in-flight requests finish and reach the hook
    sink.close()               # everything buffered is written before the process exits
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from kiln.serving.messages import Feedback, TrafficEvent
from kiln.traffic import (
    STATUS_OK,
    FeedbackWriter,
    TrafficCollector,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
)


def traffic_record(event: TrafficEvent, now_ns: int | None = None) -> TrafficRecord:
    """The log row of one request. The first input and the first output are logged (Kiln's
    models have one of each); `route` is the event's (primary, canary or shadow)."""
    request, response = event.request, event.response
    now_ns = now_ns or time.time_ns()
    request_id = (response.id if response is not None else "") or request.id
    output = next(iter(response.outputs.values()), None) if response is not None else None
    timings = event.timings
    error = event.error
    return TrafficRecord(
        request_id=request_id or uuid.uuid4().hex,
        timestamp_us=(now_ns - event.total_ns) // 1000,
        model=request.model,
        version=event.served_version,
        latency_us=event.total_ns // 1000,
        status=STATUS_OK if error is None else error.code.value,
        route=event.route,
        transport=request.transport,
        input=next(iter(request.inputs.values()), None),
        output=output,
        queue_us=timings.queue_ns // 1000 if timings is not None else None,
        batch_size=timings.batch_size if timings is not None else None,
        error=error.message if error is not None else None,
    )


class TrafficSink:
    """A request logger and a feedback store over one KILN_HOME, as the core's two hooks."""

    def __init__(
        self, home: Path, settings: TrafficSettings | None = None, *, feedback_source: str = "grpc"
    ) -> None:
        settings = settings or TrafficSettings()
        self.feedback_source = feedback_source
        """Recorded with each label: the transport that carried it."""
        self.logger = TrafficLogger(home, settings)
        self.feedback = FeedbackWriter(home, settings)
        self.collector = TrafficCollector(traffic=self.logger, feedback=self.feedback)
        """Prometheus collector of written/dropped rows; register it with the server's."""

    def on_request(self, event: TrafficEvent) -> None:
        """The core's `traffic_hook`: buffers the row and returns (drops are counted)."""
        self.logger.log(traffic_record(event))

    def on_feedback(self, items: Sequence[Feedback]) -> None:
        """The core's `feedback_hook`: buffers each label (the core validated them)."""
        for item in items:
            self.feedback.add(
                item.request_id,
                item.label,
                model=item.model or None,
                source=self.feedback_source,
                received_at_ns=item.received_at_ns,
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything logged so far (both streams); True when done within `timeout`."""
        return self.logger.flush(timeout) & self.feedback.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write everything buffered and stop both writers (call after the server drained)."""
        return self.logger.close(timeout) & self.feedback.close(timeout)
