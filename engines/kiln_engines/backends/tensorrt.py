"""TensorRT: the backend's entry points (status, loading, and building for `kiln compile`), and
plans that fit the host they are loaded on.

Plans are not portable. Each is stored in a Kiln plan file (`tensorrt_plan`) that records the
GPU and TensorRT version and carries the ONNX model; a plan built elsewhere is rebuilt on load
when this host has a builder (and the rebuild is cached), and is a clear error otherwise. The
pieces: `tensorrt_cuda` (TensorRT, cuda-python and the GPU), `tensorrt_builder` (ONNX to plan),
`tensorrt_runtime` (running a plan).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from kiln_engines.backends import BackendStatus
from kiln_engines.backends.tensorrt_builder import BuildConfig, build_plan, build_plan_file
from kiln_engines.backends.tensorrt_cuda import (
    HOW_TO_GET,
    cuda_device,
    import_cudart,
    import_tensorrt,
)
from kiln_engines.backends.tensorrt_plan import PlanFile, mismatch, read_plan_file, write_plan_file
from kiln_engines.backends.tensorrt_runtime import NAME, TensorRTEngine
from kiln_engines.engine import EngineOptions
from kiln_engines.errors import BackendUnavailable, EngineLoadError
from kiln_engines.host import Gpu, cuda_gpus

__all__ = ["NAME", "BuildConfig", "build_plan_file", "open_engine", "plan_for_host", "status"]


def status() -> BackendStatus:
    """Whether TensorRT, cuda-python and a GPU are here, and whether this TensorRT can build."""
    try:
        trt = import_tensorrt()
    except BackendUnavailable:
        return BackendStatus(NAME, False, "not installed", HOW_TO_GET)
    try:
        import_cudart()
    except BackendUnavailable:
        return BackendStatus(
            NAME, False, "cuda-python is not installed", HOW_TO_GET, version=trt.__version__
        )
    gpus = cuda_gpus()
    if not gpus:
        return BackendStatus(
            NAME,
            False,
            f"TensorRT {trt.__version__} is installed but no NVIDIA GPU was found",
            "run on a machine with an NVIDIA GPU and its driver",
            version=trt.__version__,
        )
    builder = "can build" if hasattr(trt, "Builder") else "runtime only: cannot build or rebuild"
    names = ", ".join(f"{g.name} (compute capability {g.compute_capability})" for g in gpus)
    return BackendStatus(NAME, True, f"{names}; {builder}", None, ("cuda",), trt.__version__)


def plan_for_host(
    plan_file: PlanFile,
    path: Path,
    gpu: Gpu,
    tensorrt_version: str,
    *,
    rebuild: Callable[[PlanFile], bytes] | None,
    why_no_rebuild: str = "",
) -> bytes:
    """The plan bytes to deserialize here: the stored plan when it fits this GPU and TensorRT,
    otherwise `rebuild(plan_file)`; `EngineLoadError` (failed_precondition) when it cannot be.
    """
    problem = mismatch(plan_file.header, gpu, tensorrt_version)
    if problem is None:
        return plan_file.plan
    if plan_file.onnx is None:
        why_no_rebuild = "it carries no ONNX model to rebuild from"
    if rebuild is None or plan_file.onnx is None:
        raise EngineLoadError(
            f"the TensorRT plan {path} cannot run here: {problem}. It cannot be rebuilt here "
            f"({why_no_rebuild or 'no builder'}); run `kiln compile REF --target tensorrt` on "
            "this host, or serve another artifact",
            code="failed_precondition",
        )
    return rebuild(plan_file)


def _rebuild(plan_file: PlanFile, options: EngineOptions, trt_version: str, gpu: Gpu) -> bytes:
    """Rebuild a foreign plan for this GPU, reusing an earlier rebuild cached in cache_dir."""
    source = hashlib.sha256(plan_file.plan).hexdigest()[:16]
    cached = None
    if options.cache_dir is not None:
        name = f"{source}-{trt_version}-sm{gpu.compute_capability}.plan"
        cached = options.cache_dir / "tensorrt" / "plans" / name
        if cached.is_file():
            try:
                existing = read_plan_file(cached)
                if mismatch(existing.header, gpu, trt_version) is None:
                    return existing.plan
            except EngineLoadError:
                cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, not fatal
    assert plan_file.onnx is not None
    h = plan_file.header
    header, plan, calib = build_plan(
        plan_file.onnx,
        h.signature,
        BuildConfig(
            precision=h.precision,
            max_batch=h.max_batch,
            opt_batch=h.opt_batch,
            min_batch=h.min_batch,
            device_index=options.device_index,
        ),
        calibration_cache=plan_file.calibration_cache,
        cache_dir=options.cache_dir,
    )
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_plan_file(cached, header, plan, onnx=None, calibration_cache=calib)
    return plan


def open_engine(path: Path, options: EngineOptions, kind: str = NAME) -> TensorRTEngine:
    """Load a Kiln plan file on `options.device`, rebuilding a plan built elsewhere when the
    options and this TensorRT allow it."""
    plan_file = read_plan_file(path)  # integrity first: damage is reported as damage
    trt = import_tensorrt()
    cudart = import_cudart()
    if options.device_type != "cuda":
        raise EngineLoadError(
            "TensorRT plans run on CUDA devices only; load with device 'cuda'",
            code="invalid_argument",
        )
    gpu = cuda_device(options.device_index)
    can_build = hasattr(trt, "Builder") and options.allow_rebuild
    why_not = (
        ""
        if can_build
        else (
            "rebuilding is turned off"
            if not options.allow_rebuild
            else "TensorRT here is runtime-only"
        )
    )
    plan = plan_for_host(
        plan_file,
        path,
        gpu,
        trt.__version__,
        rebuild=(lambda pf: _rebuild(pf, options, trt.__version__, gpu)) if can_build else None,
        why_no_rebuild=why_not,
    )
    return TensorRTEngine(trt, cudart, plan, plan_file.header, options.device_index, path)
