"""The one table from Kiln error codes to HTTP statuses, and the KServe error body.

A `KilnError` answers its status with `{"error": message}` (the message says what was wrong and
what to do); an INTERNAL error or an unexpected exception answers 500 with a generic message,
its details logged here and never sent. Messages pass `messages.client_message` (no server paths,
control characters escaped, bounded length), as over gRPC.
"""

from __future__ import annotations

import logging
from typing import Final

import orjson

from kiln.errors import ErrorCode, KilnError, ModelNotServed, VersionNotServed
from kiln.serving.messages import client_message

log = logging.getLogger("kiln.serving.http")

STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DATA_LOSS: 500,
    ErrorCode.INTERNAL: 500,
}
"""Kiln's error codes as HTTP statuses (Google's mapping of the same gRPC codes, which
`kiln.serving.grpc.status` uses): the only place they are translated for HTTP."""

INTERNAL_MESSAGE: Final = "internal server error; the server log has the details"

RETRY_AFTER_S: Final[dict[int, int]] = {429: 1, 503: 1}
"""Seconds a client should wait before retrying a request refused with these statuses
(`Retry-After`)."""

LOAD_HINT: Final = (
    "; over HTTP that is POST /v2/repository/models/NAME/load (with model control on)"
)
"""Added to the core's "load it to serve it": the request that loads, in this transport's words."""

JSON: Final = "application/json"


def status_of(error: KilnError) -> tuple[int, str]:
    """The HTTP status and client-facing message of `error` (INTERNAL details withheld)."""
    status = STATUS.get(error.code, 500)
    if error.code in (ErrorCode.INTERNAL, ErrorCode.DATA_LOSS) or status == 500:
        log.error("internal error: %s", error.message)
        return 500, INTERNAL_MESSAGE
    if isinstance(error, ModelNotServed | VersionNotServed):
        # After client_message, which would shorten the path in the hint as a server's path.
        return status, client_message(error.message) + LOAD_HINT
    return status, client_message(error.message)


def error_body(message: str) -> bytes:
    """The KServe error body: `{"error": "..."}`."""
    return orjson.dumps({"error": message})


def failure(exc: BaseException, what: str) -> tuple[int, str]:
    """Status and message for `exc` raised while answering `what` (unexpected ones logged)."""
    if isinstance(exc, KilnError):
        return status_of(exc)
    log.error("%s failed unexpectedly", what, exc_info=exc)
    return 500, INTERNAL_MESSAGE
