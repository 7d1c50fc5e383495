"""The serving core's traffic and feedback hooks, writing to `kiln.traffic`.

`TrafficSink` turns each `TrafficEvent` into a row (`traffic_row`: attribute reads only; the
writer thread converts tensors a whole flush at a time) and hands labels to the feedback
store.
A server plugs it in and closes it after draining::

    sink = TrafficSink(log_store(settings), feedback_source="grpc")  # `--no-traffic-log`: none
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
from typing import Any

from kiln.serving.messages import Feedback, TrafficEvent
from kiln.text import TEXT_INPUT
from kiln.traffic import (
    STATUS_OK,
    FeedbackWriter,
    TrafficCollector,
    TrafficLogger,
    TrafficRecord,
    TrafficSettings,
    as_store,
)
from kiln.traffic.store import LogRoot


def traffic_row(event: TrafficEvent, now_ns: int, keep_input: bool = True) -> tuple[Any, ...]:
    """The log row of one request that ended at `now_ns` (wall clock), in `TrafficColumns`
    order: plain values and the arrays, nothing the garbage collector tracks (see
    `TrafficLogger.log_row`). The first input (unless `keep_input` is False) and the first
    output are logged (Kiln's models have one of each); `route` is the event's (primary,
    canary or shadow).

    A text request (a BYTES input named `text`) logs its strings instead of a numeric input
    (the array as received, decoded on the writer thread; dropped like an input when
    `keep_input` is False), and the per-string token and unknown-token counts the serving core
    put on the response (`InferResponse.text_stats`), always. A pre-tokenised request logs its
    `input_ids` as the input, as any model's first input, and its counts.
    """
    request, response, error, timings = event.request, event.response, event.error, event.timings
    inputs = request.inputs
    text = inputs.get(TEXT_INPUT)
    if text is not None and text.dtype.kind not in "OSU":  # a numeric tensor named "text"
        text = None
    stats = response.text_stats if response is not None else None
    return (
        (response.id if response is not None else "") or request.id or uuid.uuid4().hex,
        (now_ns - event.total_ns) // 1000,
        request.model,
        event.served_version,
        event.total_ns // 1000,
        STATUS_OK if error is None else error.code.value,
        str(event.route),
        str(request.transport),
        next(iter(inputs.values())) if inputs and keep_input and text is None else None,
        next(iter(response.outputs.values()), None) if response is not None else None,
        timings.queue_ns // 1000 if timings is not None else None,
        timings.batch_size if timings is not None else None,
        error.message if error is not None else None,
        text if keep_input else None,
        stats.tokens if stats is not None else None,
        stats.unknown if stats is not None else None,
    )


def traffic_record(event: TrafficEvent, now_ns: int | None = None) -> TrafficRecord:
    """`traffic_row` as a `TrafficRecord`."""
    return TrafficRecord(*traffic_row(event, now_ns or time.time_ns()))


class TrafficSink:
    """A request logger and a feedback store over one KILN_HOME or `LogStore` (a bucket:
    `kiln.traffic.log_store(settings)`), as the core's two hooks."""

    def __init__(
        self, home: LogRoot, settings: TrafficSettings | None = None, *, feedback_source: str = ""
    ) -> None:
        settings = settings or TrafficSettings()
        self.feedback_source = feedback_source
        """Recorded with each label: the transport that carried it (each server says which;
        empty for labels handed over in-process)."""
        store = as_store(home)  # one store (one S3 client) for both writers
        self.logger = TrafficLogger(store, settings)
        self.feedback = FeedbackWriter(store, settings)
        self.collector = TrafficCollector(traffic=self.logger, feedback=self.feedback)
        """Prometheus collector of written/dropped rows; register it with the server's."""

    def on_request(self, event: TrafficEvent) -> None:
        """The core's `traffic_hook`: buffers the row and returns (drops are counted)."""
        logger = self.logger
        logger.log_row(traffic_row(event, time.time_ns(), logger.keep_input()))

    def on_feedback(self, items: Sequence[Feedback]) -> None:
        """The core's `feedback_hook`: buffers every item or none (`FeedbackBufferFull`)."""
        add = self.feedback.row
        self.feedback.add_all(
            [
                add(
                    i.request_id, i.label, i.model, i.transport or self.feedback_source,
                    i.received_at_ns,
                    value=i.value,
                )
                for i in items
            ]
        )  # fmt: skip

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything logged so far (both streams); True when done within `timeout`."""
        return self.logger.flush(timeout) & self.feedback.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write everything buffered and stop both writers (call after the server drained)."""
        return self.logger.close(timeout) & self.feedback.close(timeout)
