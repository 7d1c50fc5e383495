"""onnxruntime: the CPU default, and CUDA when onnxruntime-gpu is installed.

`optimize` applies onnxruntime's graph optimisations once, offline, and saves the result: that
file is the `onnxruntime` artifact. It stops at the "extended" level, whose fusions are the same
on every x86 CPU; the layout transformations of the "all" level depend on the CPU's vector width
(NCHWc blocking), so they run online when a host opens the engine, where they are cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kiln_engines.backends import BackendStatus
from kiln_engines.engine import Engine, EngineOptions
from kiln_engines.errors import BackendBuildError, BackendUnavailable, EngineError, EngineLoadError
from kiln_engines.host import cuda_gpus
from kiln_engines.signature import SIGNATURE_METADATA_KEY, Signature, TensorSpec

NAME = "onnxruntime"
HOW_TO_GET = "pip install onnxruntime (CPU), or onnxruntime-gpu on a machine with an NVIDIA GPU"

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint64)": "uint64",
    "tensor(uint32)": "uint32",
    "tensor(uint16)": "uint16",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def status() -> BackendStatus:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return BackendStatus(NAME, False, f"not installed ({exc})", HOW_TO_GET)
    providers = ort.get_available_providers()
    devices = ["cpu"]
    if "CUDAExecutionProvider" in providers and cuda_gpus():
        devices.append("cuda")
    note = "" if "cuda" in devices else "; CUDA needs onnxruntime-gpu and an NVIDIA GPU"
    return BackendStatus(
        NAME,
        True,
        f"providers: {', '.join(providers)}{note}",
        None,
        tuple(devices),
        ort.__version__,
    )


def _providers(options: EngineOptions) -> list[str]:
    import onnxruntime as ort

    if options.providers:
        return list(options.providers)
    if options.device_type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} here has no CUDA execution provider; "
            "pip install onnxruntime-gpu on a machine with an NVIDIA GPU, or use device 'cpu'"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _session_options(options: EngineOptions, level: str = "all") -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    # Inter-op threads only do anything when independent nodes may run in parallel.
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if options.inter_op_threads > 1
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    return so


def optimize(source: Path, dest: Path, options: EngineOptions | None = None) -> None:
    """Apply onnxruntime's portable graph optimisations to `source` and save them as `dest`."""
    import onnxruntime as ort

    options = options or EngineOptions()
    so = _session_options(options, level="extended")
    tmp = dest.with_name(dest.name + ".tmp")
    so.optimized_model_filepath = str(tmp)
    try:
        ort.InferenceSession(str(source), sess_options=so, providers=_providers(options))
    except EngineError:
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise BackendBuildError(f"onnxruntime could not optimise {source}: {exc}") from exc
    os.replace(tmp, dest)


def open_engine(path: Path, options: EngineOptions, kind: str = NAME) -> OnnxRuntimeEngine:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc}); {HOW_TO_GET}") from exc
    providers = _providers(options)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=_session_options(options), providers=providers
        )
    except Exception as exc:
        # onnxruntime raises its own pybind exception types; their names are the only
        # reliable way to tell a damaged file from a model this build cannot run.
        cause = type(exc).__name__
        if cause in ("NotImplemented", "EPFail"):
            raise EngineLoadError(
                f"onnxruntime {ort.__version__} cannot run {path}: {exc}",
                code="failed_precondition",
            ) from exc
        raise EngineLoadError(
            f"{path} is not a loadable ONNX model ({cause}: {exc}). The file is corrupt or "
            "truncated; rebuild it with `kiln compile`"
        ) from exc
    return OnnxRuntimeEngine(session, kind, options.device if "CUDA" in providers[0] else "cpu")


def _signature_of(session: Any) -> Signature:
    meta = session.get_modelmeta().custom_metadata_map
    if SIGNATURE_METADATA_KEY in meta:
        return Signature.from_dict(json.loads(meta[SIGNATURE_METADATA_KEY]))

    def spec(arg: Any) -> TensorSpec:
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise EngineLoadError(
                f"tensor '{arg.name}' has type {arg.type}, which Kiln engines do not support",
                code="failed_precondition",
            )
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)
        return TensorSpec(arg.name, dtype, shape)

    return Signature(
        tuple(spec(a) for a in session.get_inputs()),
        tuple(spec(a) for a in session.get_outputs()),
    )


class OnnxRuntimeEngine(Engine):
    """An onnxruntime InferenceSession behind the Engine interface (thread-safe)."""

    def __init__(self, session: Any, kind: str, device: str) -> None:
        self.kind = kind
        super().__init__(_signature_of(session), device)
        self._session = session
        self._output_names = list(self.signature.output_names)
        self.providers: tuple[str, ...] = tuple(session.get_providers())

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = inputs if isinstance(inputs, dict) else dict(inputs)
        try:
            outputs = self._session.run(self._output_names, feed)
        except Exception as exc:
            raise EngineError(f"onnxruntime failed to run the model: {exc}") from exc
        return dict(zip(self._output_names, outputs, strict=True))

    def _release(self) -> None:
        self._session = None
