"""What the TensorRT backend needs from the host: TensorRT itself, NVIDIA's CUDA runtime
bindings (device memory and streams, never torch's) and the GPU to run on.

Each library is imported when first needed, and a missing one is `BackendUnavailable` saying
how to get it.
"""

from __future__ import annotations

import importlib
from typing import Any

from kiln_engines.errors import BackendUnavailable, EngineError
from kiln_engines.host import Gpu, cuda_gpus

HOW_TO_GET = (
    "pip install 'kiln[tensorrt]' on a machine with an NVIDIA GPU "
    "(TensorRT's libraries come from NVIDIA's package index, https://pypi.nvidia.com)"
)


def import_tensorrt() -> Any:
    """The `tensorrt` module; `BackendUnavailable` when it is missing or cannot load."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError when its shared libraries are missing
        raise BackendUnavailable(
            f"tensorrt: not installed or not loadable ({exc}); {HOW_TO_GET}"
        ) from exc
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime bindings; `BackendUnavailable` when cuda-python is missing."""
    # cuda-python >= 12.6 moved the runtime bindings; older releases keep the flat module.
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise BackendUnavailable(
        f"tensorrt needs NVIDIA's cuda-python for device memory and streams; {HOW_TO_GET}"
    )


def cuda_check(result: Any) -> Any:
    """Unwrap a cuda-python call's (error, value...) tuple, raising on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA call failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_device(index: int) -> Gpu:
    """CUDA device `index` of this host; `BackendUnavailable` when there is no such GPU."""
    gpus = cuda_gpus()
    if not gpus:
        raise BackendUnavailable("tensorrt needs an NVIDIA GPU and none was found on this host")
    for found in gpus:
        if found.index == index:
            return found
    raise BackendUnavailable(f"there is no CUDA device {index}; this host has {len(gpus)}")
