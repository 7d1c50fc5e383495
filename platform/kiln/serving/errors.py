"""The conditions serving reports, each a `KilnError` with a transport-neutral code.

Transports map codes to their own status in one table (`kiln.serving.grpc.status`); nothing
here knows about gRPC or HTTP.
"""

from __future__ import annotations

from kiln.errors import ErrorCode, InvalidArgument, KilnError, NotFound, Unavailable


class InferRequestInvalid(InvalidArgument):
    """An inference request is malformed: datatypes, shapes, contents, inputs or outputs."""


class FeedbackInvalid(InvalidArgument):
    """A feedback item lacks its request id or has an impossible label."""


class ModelNotServed(NotFound):
    """No model by that name is loaded on this server."""


class VersionNotServed(NotFound):
    """The model is loaded, but not the requested version."""


class ModelNotReady(Unavailable):
    """The model is loading or unloading; retry shortly."""


class EngineOutputInvalid(KilnError):
    """The engine returned outputs that do not cover the batch it was given (a backend bug)."""


class QueueFull(KilnError):
    """The model's request queue is at its bound; the client should back off and retry."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class RequestTimedOut(Unavailable):
    """A request waited in the queue longer than the timeout it asked for."""


class ServerShuttingDown(Unavailable):
    """The server is draining and accepts no new requests."""


class NotAuthenticated(KilnError):
    """A call that needs the server's bearer token came without it, or with a wrong one."""

    code = ErrorCode.UNAUTHENTICATED


class FeedbackDisabled(KilnError):
    """The server was started without a feedback sink, so it cannot accept labels."""

    code = ErrorCode.FAILED_PRECONDITION


class EngineFailed(KilnError):
    """The engine refused or failed a batch; the code is the engine error's own."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class InternalError(KilnError):
    """Something unexpected failed; details are in the server log, never sent to clients."""


class RequestCancelled(Unavailable):
    """The client went away (cancelled or past its deadline) before the answer was ready."""
