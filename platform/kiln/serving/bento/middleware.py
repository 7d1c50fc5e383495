"""ASGI middleware of the BentoML service: a bound on request bodies, and a retry hint.

BentoML 1.4 has no request size limit of its own (`api_server.max_request_size` was removed),
and it reads and parses a whole body before the service sees it: a 48 MiB JSON body cost
1.45 GB before anything could refuse it. `BodyLimit` refuses a body over the limit from its
Content-Length before reading any of it, and counts what arrives when there is none (chunked
uploads), so no body bigger than the limit is ever held.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.serving.bento.errors import KilnHTTPError

RETRY_AFTER_S = 1
"""What a 429 or 503 answer asks clients to wait before retrying (Retry-After, in seconds):
a full feedback buffer drains within a flush interval, a full queue within a batch or two."""


def body_too_large(limit: int, size: int | None = None) -> str:
    sent = f" ({size} bytes)" if size is not None else ""
    return (
        f"the request body{sent} is larger than this server accepts: at most {limit} bytes "
        "(KILN_BENTO_MAX_BODY_BYTES); send fewer rows per request or a smaller image (an "
        "image file to /classify_image is far smaller than its pixels as JSON)"
    )


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413.

    A Content-Length over the limit is answered at once, without reading the body. Without
    one, the body is counted as it arrives; the read that passes the limit raises a 413
    `KilnHTTPError`, which BentoML's API handler renders as it renders every 4xx.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _answer(
                send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, body_too_large(self.max_bytes, declared)
            )
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise KilnHTTPError(
                        body_too_large(self.max_bytes),
                        error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    )
            return message

        await self.app(scope, counted, send)


class RetryHint:
    """Add `Retry-After` to 429 and 503 answers that carry none: both mean "not now" (a full
    queue or feedback buffer, load shedding, a model loading, a server draining)."""

    def __init__(self, app: ASGIApp, seconds: int = RETRY_AFTER_S) -> None:
        self.app = app
        self.header = (b"retry-after", str(seconds).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def hinted(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, hinted)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the HTTP server refuses such requests before they get here
                return None
    return None


async def _answer(send: Send, status: HTTPStatus, message: str) -> None:
    """An error answer shaped like BentoML's own for a 4xx `BentoMLException`."""
    body = json.dumps([{"error": message}]).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread body is still on its way: end the connection
    ]
    await send({"type": "http.response.start", "status": int(status), "headers": headers})
    await send({"type": "http.response.body", "body": body})
