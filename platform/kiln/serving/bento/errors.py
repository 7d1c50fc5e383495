"""The HTTP transport's one mapping from Kiln error codes to HTTP statuses."""

from __future__ import annotations

from http import HTTPStatus

from bentoml.exceptions import BentoMLException

from kiln.errors import ErrorCode, KilnError

HTTP_STATUS: dict[ErrorCode, HTTPStatus] = {
    ErrorCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    ErrorCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
    ErrorCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


class KilnHTTPError(BentoMLException):
    """A `KilnError` on its way to an HTTP client: BentoML renders it with its status.

    BentoML shows the message for 4xx statuses and hides it for 5xx ones (the server log has
    the details), which is the behaviour Kiln wants for internal failures too.
    """


def to_http(exc: KilnError) -> KilnHTTPError:
    return KilnHTTPError(exc.message, error_code=HTTP_STATUS.get(exc.code, HTTPStatus(500)))
