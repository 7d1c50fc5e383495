"""What a failure inside the serving core becomes for the client: always a `KilnError`.

Transports map `KilnError` codes to their statuses (one table each), so whatever escapes an
engine or a bug is converted here, in one place, before it reaches them or the traffic log.
"""

from __future__ import annotations

import logging

from kiln.errors import EngineFailed, ErrorCode, InternalError, KilnError
from kiln_engines import EngineError

log = logging.getLogger("kiln.serving")


def as_kiln_error(exc: BaseException, what: str) -> KilnError:
    """`exc` as the error a client sees: itself when it is a `KilnError`; `EngineFailed` with
    the engine error's own code; otherwise `InternalError`, with the traceback logged here (the
    client learns only that `what` failed: "request 'r1' for 'digits'")."""
    if isinstance(exc, KilnError):
        return exc
    if isinstance(exc, EngineError):
        return EngineFailed(exc.message, _code(exc.code))
    log.error("%s failed unexpectedly", what, exc_info=exc)
    return InternalError(f"internal error in {what}")


def _code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL
