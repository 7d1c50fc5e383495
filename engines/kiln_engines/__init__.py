"""kiln_engines: the compiled inference core (one Engine interface, several backends).

    from kiln_engines import load
    with load("model.onnx", "onnxruntime") as engine:
        outputs = engine.infer({"input": batch})  # dict[str, np.ndarray]

Backends: onnxruntime (CPU default, CUDA with onnxruntime-gpu), aotinductor (torch's compiled
.pt2 packages) and tensorrt (NVIDIA GPUs). This package imports numpy only; each backend imports
its own library when it is first used, and never `kiln`.
"""

from __future__ import annotations

from kiln_engines.backends import BackendStatus, available_backends, load
from kiln_engines.engine import Engine, EngineOptions
from kiln_engines.errors import (
    BackendBuildError,
    BackendUnavailable,
    EngineClosed,
    EngineConfigError,
    EngineError,
    EngineInputError,
    EngineLoadError,
)
from kiln_engines.host import HostInfo, host_info
from kiln_engines.selection import Candidate, Selection, choose, rank
from kiln_engines.signature import DYNAMIC, InputValidator, Signature, TensorSpec

__all__ = [
    "DYNAMIC",
    "BackendBuildError",
    "BackendStatus",
    "BackendUnavailable",
    "Candidate",
    "Engine",
    "EngineClosed",
    "EngineConfigError",
    "EngineError",
    "EngineInputError",
    "EngineLoadError",
    "EngineOptions",
    "HostInfo",
    "InputValidator",
    "Selection",
    "Signature",
    "TensorSpec",
    "available_backends",
    "choose",
    "host_info",
    "load",
    "rank",
]
