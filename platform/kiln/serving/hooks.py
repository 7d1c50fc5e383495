"""The hooks the serving core calls with what it served: traffic (and shadow answers), labels.

`kiln serve` passes a `kiln.serving.traffic_hook.TrafficSink`'s methods; the BentoML service
and the tests pass their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kiln.serving.messages import Feedback, TrafficEvent

TrafficHook = Callable[[TrafficEvent], None]
"""Called on the event loop once per inference request for a served model, after the answer
is computed and before it is sent. Must return quickly (buffer, never write to disk inline);
exceptions are logged and swallowed: logging traffic never fails a request. Requests naming a
model that is not served never reach it (they are counted in the metrics only): a client must
not be able to create storage by naming models."""

FeedbackHook = Callable[[Sequence[Feedback]], None]
"""Called on the event loop with the accepted labels of one feedback call. Must return quickly,
and keep all of them or none: it raises (`FeedbackBufferFull` when its buffer is full) to fail
the whole call, which the client retries."""
