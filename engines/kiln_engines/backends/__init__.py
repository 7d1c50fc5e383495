"""The backend table: which module runs which artifact kind, and whether it can run here.

Each backend module exposes `NAME`, `status() -> BackendStatus` and
`open_engine(path, options) -> Engine`, and imports its library lazily, inside those functions,
so that importing `kiln_engines` costs nothing and never pulls in torch or TensorRT.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from kiln_engines.engine import Engine, EngineOptions
from kiln_engines.errors import EngineError, EngineLoadError


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """Whether a backend can load engines on this host, and if not, why and how to get it."""

    name: str
    usable: bool
    reason: str
    how_to_get: str | None = None
    devices: tuple[str, ...] = ()
    """Devices it can run on here ("cpu", "cuda"); empty when not usable."""
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "usable": self.usable,
            "reason": self.reason,
            "how_to_get": self.how_to_get,
            "devices": list(self.devices),
            "version": self.version,
        }


BACKENDS = ("onnxruntime", "aotinductor", "tensorrt")
"""Backend names, in the order `kiln engines` lists them (preference: `kiln_engines.selection`)."""

KIND_TO_BACKEND = {
    "onnxruntime": "onnxruntime",  # an ONNX model optimised offline for onnxruntime
    "onnx": "onnxruntime",  # a plain ONNX model runs on onnxruntime too
    "aotinductor": "aotinductor",
    "tensorrt": "tensorrt",
}
"""Artifact kinds that `load` accepts, and the backend that runs each."""


def backend_module(name: str) -> ModuleType:
    """The module implementing backend `name` (importing it does not import its library)."""
    if name not in BACKENDS:
        raise EngineError(
            f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}", code="invalid_argument"
        )
    return importlib.import_module(f"kiln_engines.backends.{name}")


def status(name: str) -> BackendStatus:
    result: BackendStatus = backend_module(name).status()
    return result


def available_backends() -> list[BackendStatus]:
    """Every backend with its usability on this host (imports each backend's library)."""
    return [status(name) for name in BACKENDS]


def load(path: str | Path, kind: str, options: EngineOptions | None = None) -> Engine:
    """Load the engine file at `path` as artifact `kind`.

    Raises `EngineLoadError` (missing, corrupt or incompatible file), `BackendUnavailable`
    (the backend's library or device is missing here) or `EngineError` for an unknown kind.
    """
    backend = KIND_TO_BACKEND.get(kind)
    if backend is None:
        raise EngineError(
            f"unknown engine kind {kind!r}; kinds: {', '.join(KIND_TO_BACKEND)}",
            code="invalid_argument",
        )
    path = Path(path)
    if not path.is_file():
        raise EngineLoadError(f"engine file {path} does not exist", code="not_found")
    engine: Engine = backend_module(backend).open_engine(path, options or EngineOptions(), kind)
    return engine
