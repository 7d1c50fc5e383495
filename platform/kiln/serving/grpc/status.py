"""The one table from Kiln error codes to gRPC status codes, and the decorator that applies it.

Every servicer method is wrapped in `rpc`: a `KilnError` becomes its status code with its
message (which says what was wrong and what to do); an INTERNAL error or an unexpected
exception becomes INTERNAL with a generic message, its details logged here and never sent.

Whatever layer wrote a message, what leaves here is fit for any client: no server paths
(`messages.client_message`: control characters escaped, at most `MAX_CLIENT_MESSAGE_BYTES`; the
message travels as `grpc-message` metadata, and clients refuse more than 8 KB of metadata).
A RESOURCE_EXHAUSTED status carries `grpc-retry-pushback-ms`, which gRPC retry policies honour.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc

from kiln.errors import ErrorCode, KilnError, ModelNotServed, VersionNotServed
from kiln.serving.messages import client_message

log = logging.getLogger("kiln.serving.grpc")

STATUS: Final[dict[ErrorCode, grpc.StatusCode]] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}
"""Kiln's error codes as gRPC status codes: the only place they are translated."""

INTERNAL_MESSAGE: Final = "internal server error; the server log has the details"

RETRY_PUSHBACK_MS: Final[dict[grpc.StatusCode, int]] = {grpc.StatusCode.RESOURCE_EXHAUSTED: 1000}
"""How long a client should wait before retrying a call refused with these statuses."""

LOAD_HINT: Final = "; over gRPC that is RepositoryModelLoad (with model control on)"
"""Added to the core's "load it to serve it": the RPC that loads, in this transport's words."""

Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def status_of(error: KilnError) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message of `error` (INTERNAL details withheld)."""
    code = STATUS.get(error.code, grpc.StatusCode.INTERNAL)
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", error.message)
        return code, INTERNAL_MESSAGE
    if isinstance(error, ModelNotServed | VersionNotServed):
        return code, client_message(error.message + LOAD_HINT)
    return code, client_message(error.message)


def trailers(code: grpc.StatusCode) -> tuple[tuple[str, str], ...]:
    """The trailing metadata a failed call ends with (a retry hint, for some codes)."""
    pushback = RETRY_PUSHBACK_MS.get(code)
    return (("grpc-retry-pushback-ms", str(pushback)),) if pushback else ()


async def abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> NoReturn:
    """End a call that failed with `exc` with the status it maps to (INTERNAL, logged, for
    anything that is not a `KilnError`; an abort already under way passes through)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, KilnError):
        code, message = status_of(exc)
    else:
        log.error("%s failed unexpectedly", method, exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
    await context.abort(code, message, trailers(code))
    raise AssertionError("context.abort returned")  # pragma: no cover


def rpc(method: Method) -> Method:
    """Translate errors raised by a unary servicer method into gRPC statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await abort(context, exc, method.__name__)

    return wrapper  # type: ignore[return-value]
