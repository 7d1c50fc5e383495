"""Kiln's errors: one class per condition, each carrying a transport-neutral code.

Transports translate codes, never classes: the gRPC server maps `ErrorCode` to a status code,
the HTTP service to a status, the CLI to an exit code, each in exactly one table. A message
says what was wrong *and what to do about it*.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import StrEnum


class ErrorCode(StrEnum):
    """What kind of failure an error is, independent of any transport."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"
    INTERNAL = "internal"


class KilnError(Exception):
    """Base class of every error Kiln raises on purpose.

    Subclasses set `code`; the message is shown to users as is, so it must be actionable.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(KilnError):
    """A value given by the user is malformed or out of range."""

    code = ErrorCode.INVALID_ARGUMENT


class NotFound(KilnError):
    """Something the user named does not exist."""

    code = ErrorCode.NOT_FOUND


class FailedPrecondition(KilnError):
    """The request is well formed but the system is not in a state that allows it."""

    code = ErrorCode.FAILED_PRECONDITION


class Unavailable(KilnError):
    """A capability or resource cannot be used on this host right now."""

    code = ErrorCode.UNAVAILABLE


class DataLoss(KilnError):
    """Stored bytes are not what was written: corruption, truncation, tampering."""

    code = ErrorCode.DATA_LOSS


# -- data ---------------------------------------------------------------------------------------


class DatasetNotFound(NotFound):
    """No data set by that name, or its files are missing."""


class DatasetInvalid(InvalidArgument):
    """A data set exists but its contents cannot be used (missing label, NaN, ragged, empty)."""


# -- training -----------------------------------------------------------------------------------


class ModelBuilderNotFound(NotFound):
    """No model builder by that name, or a `package.module:function` that cannot be imported."""


class CheckpointInvalid(DataLoss):
    """A checkpoint's files are missing, truncated or do not match their config."""


# -- sources (models Kiln did not train) -------------------------------------------------------


class SourceInvalid(InvalidArgument):
    """A model given to `kiln register` cannot be used: not the format it claims, fails the
    ONNX checker, a builder that cannot be imported or builds no module, weights that do not
    fit it, or a signature it cannot run."""


class PickleRefused(SourceInvalid):
    """A file holds Python pickle data (torch.save, a pickled state dict): Kiln never loads
    pickle, because unpickling runs arbitrary code."""


# -- registry -----------------------------------------------------------------------------------


class InvalidReference(InvalidArgument):
    """A model reference (`name`, `name:3`, `name@alias`) or a name in it is malformed."""


class ModelNotFound(NotFound):
    """No registered model by that name."""


class VersionNotFound(NotFound):
    """The model exists but has no such version."""


class AliasNotFound(NotFound):
    """The model exists but has no such alias."""


class ArtifactNotFound(NotFound):
    """The version has no artifact of the requested kind, or its blob is missing."""


class ArtifactCorrupted(DataLoss):
    """An artifact's bytes do not hash to the sha256 recorded for it."""


class GateFailed(FailedPrecondition):
    """A promotion gate refused to move an alias."""


class VersionInUse(FailedPrecondition):
    """A version cannot be deleted while an alias points at it."""


class AliasUnchanged(FailedPrecondition):
    """A promotion would move an alias to the version it already points at."""


class NothingToRollBack(FailedPrecondition):
    """An alias has no earlier version to roll back to (or that version was deleted)."""


class RolloutRefused(FailedPrecondition):
    """A canary or shadow rollout cannot start: no second version to send traffic to, it is
    the version production already serves, or it has no engine to serve with."""


class BundleInvalid(InvalidArgument):
    """A file given to import is not a Kiln bundle, or is truncated or damaged."""


class RegistryBusy(Unavailable):
    """The registry database stayed locked by other processes for longer than the retry budget."""


class RegistryUnavailable(Unavailable):
    """The registry's database server cannot be reached, or refused the connection (no such
    database, wrong credentials)."""


class StorageUnavailable(Unavailable):
    """The object store (KILN_STORAGE_URL) cannot be reached, timed out, or has no such
    bucket."""


class StorageAccessDenied(KilnError):
    """The object store refused Kiln's credentials, or they lack a permission Kiln needs."""

    code = ErrorCode.UNAUTHENTICATED


class RegistryIncompatible(FailedPrecondition):
    """The registry database was written by a newer Kiln (its schema version is unknown here)."""


class RegistryCorrupted(DataLoss):
    """The registry database exists but is not a whole Kiln registry: empty, truncated,
    overwritten, another program's database, or missing beside its write-ahead log. Kiln
    never re-creates it (its blobs would all look unreferenced); the user restores it."""


class GcRefused(FailedPrecondition):
    """`gc` would delete more than it can justify (every stored blob, or most of them);
    nothing was deleted. `--dry-run` lists what it would delete, `--yes` confirms."""


# -- engines and compilation --------------------------------------------------------------------


class EngineBuildFailed(KilnError):
    """A compilation target could not be built (export, parser or builder failure)."""

    code = ErrorCode.FAILED_PRECONDITION


class ReferenceFailed(EngineBuildFailed):
    """The model being compiled raised on the inputs parity judges its engines on."""


class ParityFailed(FailedPrecondition):
    """A compiled engine does not compute the same function as its checkpoint."""


# -- serving ------------------------------------------------------------------------------------


class InferRequestInvalid(InvalidArgument):
    """An inference request is malformed: datatypes, shapes, contents, inputs or outputs."""


class ModelNotServed(NotFound):
    """No model by that name is loaded on this server."""


class VersionNotServed(NotFound):
    """The model is loaded, but not the requested version."""


class ModelNotReady(Unavailable):
    """The model is loading or unloading; retry shortly."""


class QueueFull(KilnError):
    """A model's request queue is at its bound; the client should back off and retry."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class RequestTimedOut(Unavailable):
    """A request waited in the queue longer than the timeout it asked for."""


class RequestCancelled(Unavailable):
    """The client went away (cancelled, or past its deadline) before the answer was ready."""


class ServerShuttingDown(Unavailable):
    """The server is draining and accepts no new requests."""


class NotAuthenticated(KilnError):
    """A call that needs the server's bearer token came without it, or with a wrong one."""

    code = ErrorCode.UNAUTHENTICATED


class FeedbackDisabled(FailedPrecondition):
    """The server was started without a feedback sink, so it cannot accept labels."""


class EngineOutputInvalid(KilnError):
    """An engine returned outputs that do not cover the batch it was given (a backend bug)."""


class EngineFailed(KilnError):
    """An engine refused or failed a batch; the code is the engine error's own."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class InternalError(KilnError):
    """Something unexpected failed; details are in the server log, never sent to clients."""


class ModelControlDisabled(FailedPrecondition):
    """Repository load/unload was asked of a server started without model control (the
    default, as Triton's): it serves what it was started with."""


class PortUnavailable(Unavailable):
    """A port the server was told to listen on is in use, or not allowed to this process."""


# -- traffic and evaluation ---------------------------------------------------------------------


class TrafficNotFound(NotFound):
    """No traffic has been logged for the model (or none in the requested window)."""


class FeedbackRejected(InvalidArgument):
    """Labels that cannot be stored: a file that is unreadable, lacks `request_id`/`label` or
    has values of the wrong type; an empty request id; a label outside the model's classes."""


class FeedbackBufferFull(KilnError):
    """The feedback buffer cannot take the labels of this call now; nothing of it was kept.
    Back-pressure, not loss: the client retries the whole call after a moment."""

    code = ErrorCode.RESOURCE_EXHAUSTED


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def quote(text: str, limit: int = 64) -> str:
    """`text` as a quoted literal that is safe to echo in a message or a log line.

    Client-chosen strings (model names, request ids, references) go through this before they
    appear in any message: control and bidirectional-override characters are escaped, and at
    most `limit` characters are kept (a 10 KB name must not overflow a client's 8 KB metadata
    limit).
    """
    shown = text[:limit]
    if not shown.isprintable():
        shown = shown.encode("unicode_escape").decode("ascii")
    more = f"... ({len(text)} characters)" if len(text) > limit else ""
    return f"'{shown}'{more}"
