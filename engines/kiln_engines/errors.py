"""Errors raised by the inference core, each carrying a transport-neutral `code`.

`kiln_engines` never imports `kiln`, so it cannot subclass `kiln.errors.KilnError`; instead every
error carries a `code` string spelled exactly like a `kiln.errors.ErrorCode` value, and Kiln's
transports translate codes, never classes. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the inference core raises on purpose."""

    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class EngineInputError(EngineError):
    """Inputs do not match the engine's signature (names, dtypes, ranks or sizes)."""

    code = "invalid_argument"


class EngineLoadError(EngineError):
    """An engine file cannot be loaded.

    `code` is "data_loss" when the bytes are corrupt or truncated, "failed_precondition" when the
    file is intact but cannot run here (a TensorRT plan built for another GPU and no builder to
    rebuild it), "not_found" when the file is missing.
    """

    code = "data_loss"


class BackendBuildError(EngineError):
    """A backend's own builder refused the model: TensorRT's ONNX parser or builder,
    onnxruntime's offline optimiser. (Kiln's `EngineBuildFailed` is a whole compilation
    target failing, export included.)"""

    code = "failed_precondition"


class EngineConfigError(EngineError):
    """A build or engine setting is out of range; the message says which values work."""

    code = "invalid_argument"


class BackendUnavailable(EngineError):
    """A backend's library or device is missing on this host; the message says how to get it."""

    code = "unavailable"


class EngineClosed(EngineError):
    """`infer` was called on an engine after `close()`."""

    code = "failed_precondition"
