"""TensorRT: ONNX parser ► builder ► serialized plan, and a runtime over NVIDIA's Python API.

Written against TensorRT 10's documented Python API (name-based I/O tensors, `execute_async_v3`,
`build_serialized_network`, memory pool limits) and tolerant of TensorRT 11, which removed the
weak-typing precision flags and the INT8 calibrator: on 11, fp32 builds work and reduced
precision is refused with a message that says what to do instead. Device memory and streams
come from NVIDIA's `cuda-python` bindings, never from torch.

Plans are not portable. Each is stored in a Kiln plan file (`tensorrt_plan`) that records the GPU
and TensorRT version and carries the ONNX model; a plan built elsewhere is rebuilt on load when
this host has a builder (and the rebuild is cached), and is a clear error otherwise.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln_engines.backends import BackendStatus
from kiln_engines.backends.tensorrt_plan import (
    PlanFile,
    PlanHeader,
    mismatch,
    read_plan_file,
    write_plan_file,
)
from kiln_engines.engine import Engine, EngineOptions
from kiln_engines.errors import BackendUnavailable, EngineBuildError, EngineError, EngineLoadError
from kiln_engines.host import Gpu, cuda_gpus
from kiln_engines.signature import DYNAMIC, Signature

NAME = "tensorrt"
HOW_TO_GET = (
    "pip install 'kiln[tensorrt]' on a machine with an NVIDIA GPU "
    "(TensorRT's libraries come from NVIDIA's package index, https://pypi.nvidia.com)"
)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError when its shared libraries are missing
        raise BackendUnavailable(
            f"tensorrt: not installed or not loadable ({exc}); {HOW_TO_GET}"
        ) from exc
    return tensorrt


def _import_cudart() -> Any:
    # cuda-python >= 12.6 moved the runtime bindings; older releases keep the flat module.
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise BackendUnavailable(
        f"tensorrt needs NVIDIA's cuda-python for device memory and streams; {HOW_TO_GET}"
    )


def status() -> BackendStatus:
    try:
        trt = _import_tensorrt()
    except BackendUnavailable:
        return BackendStatus(NAME, False, "not installed", HOW_TO_GET)
    try:
        _import_cudart()
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


def _cuda_check(result: Any) -> Any:
    """Unwrap a cuda-python call's (error, value...) tuple, raising on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA call failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _gpu(index: int) -> Gpu:
    gpus = cuda_gpus()
    if not gpus:
        raise BackendUnavailable("tensorrt needs an NVIDIA GPU and none was found on this host")
    for gpu in gpus:
        if gpu.index == index:
            return gpu
    raise BackendUnavailable(f"there is no CUDA device {index}; this host has {len(gpus)}")


# -- building ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildConfig:
    precision: str = "fp32"
    max_batch: int = 64
    opt_batch: int | None = None
    """The batch size TensorRT tunes kernels for; default: max_batch (a busy batcher fills it)."""
    min_batch: int = 1
    workspace_bytes: int | None = None
    device_index: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        opt = self.opt_batch or self.max_batch
        if not 1 <= self.min_batch <= opt <= self.max_batch:
            raise ValueError("batch sizes must satisfy 1 <= min_batch <= opt_batch <= max_batch")


def _timing_cache_path(cache_dir: Path | None, trt_version: str, gpu: Gpu) -> Path | None:
    if cache_dir is None:
        return None
    return cache_dir / "tensorrt" / f"timing-{trt_version}-sm{gpu.compute_capability}.cache"


def _set_precision(trt: Any, builder: Any, config: Any, precision: str, gpu: Gpu) -> None:
    flags = trt.BuilderFlag
    if precision == "fp32":
        # TF32 would run fp32 matmuls and convolutions with a 10-bit mantissa: not fp32 parity.
        if hasattr(flags, "TF32"):
            config.clear_flag(flags.TF32)
        return
    wanted = {"fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8", "FP16"]}[precision]
    if not hasattr(flags, wanted[0]):
        raise EngineBuildError(
            f"TensorRT {trt.__version__} builds only strongly typed networks, so {precision} "
            "cannot be switched on with a builder flag: convert the ONNX model to mixed precision "
            "first (NVIDIA ModelOpt AutoCast, or Q/DQ nodes for int8), or build fp32, or use "
            "TensorRT 10"
        )
    major = int(gpu.compute_capability.split(".")[0])
    if precision == "bf16" and major < 8:
        raise EngineBuildError(
            f"{gpu.name} (compute capability {gpu.compute_capability}) has no bf16 support; "
            "bf16 needs compute capability 8.0 or newer. Use --precision fp16"
        )
    if precision == "fp16" and not getattr(builder, "platform_has_fast_fp16", True):
        raise EngineBuildError(f"{gpu.name} has no fast fp16; use --precision fp32")
    if precision == "int8" and not getattr(builder, "platform_has_fast_int8", True):
        raise EngineBuildError(f"{gpu.name} has no fast int8; use --precision fp16 or fp32")
    for flag in wanted:
        if hasattr(flags, flag):
            config.set_flag(getattr(flags, flag))


def _batched_shape(signature: Signature, name: str, batch: int) -> tuple[int, ...]:
    spec = next(s for s in signature.inputs if s.name == name)
    rest = spec.shape[1:]
    if DYNAMIC in rest:
        raise EngineBuildError(
            f"input '{name}' has dynamic dimensions besides the batch axis ({list(spec.shape)}); "
            "Kiln's TensorRT builder supports a dynamic batch axis only"
        )
    return (batch, *rest) if spec.shape and spec.shape[0] == DYNAMIC else spec.shape


class _Calibrator:
    """Feeds INT8 calibration batches to TensorRT from host arrays (TensorRT 10 only)."""

    @staticmethod
    def create(
        trt: Any,
        cudart: Any,
        batches: list[Mapping[str, np.ndarray]],
        cache: bytes | None,
    ) -> Any:
        class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)
                self._batches = iter(batches)
                self._device: dict[str, tuple[int, int]] = {}
                self.cache = cache
                self._batch_size = next(iter(batches[0].values())).shape[0] if batches else 1

            def get_batch_size(self) -> int:
                return int(self._batch_size)

            def get_batch(self, names: list[str]) -> list[int] | None:
                batch = next(self._batches, None)
                if batch is None:
                    return None
                pointers = []
                for name in names:
                    array = np.ascontiguousarray(batch[name])
                    ptr, size = self._device.get(name, (0, 0))
                    if size < array.nbytes:
                        if ptr:
                            _cuda_check(cudart.cudaFree(ptr))
                        ptr = _cuda_check(cudart.cudaMalloc(array.nbytes))
                        self._device[name] = (ptr, array.nbytes)
                    _cuda_check(
                        cudart.cudaMemcpy(
                            ptr,
                            array.ctypes.data,
                            array.nbytes,
                            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                        )
                    )
                    pointers.append(int(ptr))
                return pointers

            def read_calibration_cache(self) -> bytes | None:
                return self.cache

            def write_calibration_cache(self, cache: Any) -> None:
                self.cache = bytes(cache)

            def free(self) -> None:
                for ptr, _ in self._device.values():
                    cudart.cudaFree(ptr)
                self._device.clear()

        return Calibrator()


def build_plan(
    onnx: bytes,
    signature: Signature,
    config: BuildConfig,
    *,
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
    calibration_cache: bytes | None = None,
    cache_dir: Path | None = None,
) -> tuple[PlanHeader, bytes, bytes | None]:
    """Build a serialized plan from ONNX bytes; returns (header, plan, calibration cache).

    INT8 needs `calibration` (batches of real inputs, e.g. from the training data) or a
    `calibration_cache` from an earlier build. A timing cache in `cache_dir` makes rebuilds fast.
    Raises `EngineBuildError` naming the parser's or builder's complaint.
    """
    trt = _import_tensorrt()
    cudart = _import_cudart()
    if not hasattr(trt, "Builder"):
        raise BackendUnavailable(
            f"this TensorRT {trt.__version__} install is runtime-only and cannot build plans; "
            "install the full tensorrt package"
        )
    gpu = _gpu(config.device_index)
    _cuda_check(cudart.cudaSetDevice(config.device_index))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected the model: {errors}")

    builder_config = builder.create_builder_config()
    if config.workspace_bytes:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    _set_precision(trt, builder, builder_config, config.precision, gpu)

    opt = config.opt_batch or config.max_batch
    profile = builder.create_optimization_profile()
    for spec in signature.inputs:
        profile.set_shape(
            spec.name,
            _batched_shape(signature, spec.name, config.min_batch),
            _batched_shape(signature, spec.name, opt),
            _batched_shape(signature, spec.name, config.max_batch),
        )
    builder_config.add_optimization_profile(profile)

    calibrator = None
    if config.precision == "int8":
        batches = list(calibration or [])
        if not batches and calibration_cache is None:
            raise EngineBuildError(
                "int8 needs calibration data (batches of real inputs) or a calibration cache"
            )
        calibrator = _Calibrator.create(trt, cudart, batches, calibration_cache)
        builder_config.int8_calibrator = calibrator
        if batches and hasattr(builder_config, "set_calibration_profile"):
            # Calibration runs at one fixed shape: the shape of the batches it is fed.
            calib = builder.create_optimization_profile()
            for spec in signature.inputs:
                shape = tuple(batches[0][spec.name].shape)
                calib.set_shape(spec.name, shape, shape, shape)
            builder_config.set_calibration_profile(calib)

    cache_path = _timing_cache_path(cache_dir, trt.__version__, gpu)
    cached = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    timing_cache = builder_config.create_timing_cache(cached)
    builder_config.set_timing_cache(timing_cache, False)

    try:
        serialized = builder.build_serialized_network(network, builder_config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} failed to build a {config.precision} plan for "
            f"{gpu.name}; its log above says which layer"
        )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(timing_cache.serialize()))
        os.replace(tmp, cache_path)
    header = PlanHeader(
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=config.precision,
        min_batch=config.min_batch,
        opt_batch=opt,
        max_batch=config.max_batch,
        signature=signature.with_max_batch(config.max_batch),
    )
    new_cache = calibrator.cache if calibrator is not None else None
    return header, bytes(serialized), new_cache


def build_plan_file(
    onnx_path: Path,
    dest: Path,
    signature: Signature,
    config: BuildConfig,
    *,
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
    cache_dir: Path | None = None,
) -> PlanHeader:
    """Build a plan from an ONNX file and write a Kiln plan file carrying the ONNX model."""
    onnx = onnx_path.read_bytes()
    header, plan, calib_cache = build_plan(
        onnx, signature, config, calibration=calibration, cache_dir=cache_dir
    )
    write_plan_file(dest, header, plan, onnx=onnx, calibration_cache=calib_cache)
    return header


# -- loading -------------------------------------------------------------------------------------


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
    plan_file = read_plan_file(path)  # integrity first: damage is reported as damage
    trt = _import_tensorrt()
    cudart = _import_cudart()
    if options.device_type != "cuda":
        raise EngineLoadError(
            "TensorRT plans run on CUDA devices only; load with device 'cuda'",
            code="invalid_argument",
        )
    gpu = _gpu(options.device_index)
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


class TensorRTEngine(Engine):
    """A deserialized TensorRT engine with device buffers sized for its maximum batch.

    One execution context serves all calls, guarded by a lock (a context is not thread-safe).
    """

    kind = NAME

    def __init__(
        self, trt: Any, cudart: Any, plan: bytes, header: PlanHeader, device_index: int, path: Path
    ) -> None:
        super().__init__(header.signature.with_max_batch(header.max_batch), f"cuda:{device_index}")
        self._cudart = cudart
        self._lock = threading.Lock()
        self._buffers: dict[str, int] = {}
        self._stream: Any = None
        _cuda_check(cudart.cudaSetDevice(device_index))
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineLoadError(
                f"TensorRT {trt.__version__} refused to deserialize {path} although its header "
                f"says it was built here ({header.describe_target()}); rebuild it with "
                "`kiln compile --target tensorrt`",
                code="failed_precondition",
            )
        self._context = self._engine.create_execution_context()
        self._stream = _cuda_check(cudart.cudaStreamCreate())
        max_shapes = {
            spec.name: _batched_shape(self.signature, spec.name, header.max_batch)
            for spec in self.signature.inputs
        }
        for name, shape in max_shapes.items():
            self._context.set_input_shape(name, shape)
        self._dtypes: dict[str, np.dtype[Any]] = {}
        for spec in (*self.signature.inputs, *self.signature.outputs):
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(spec.name)))
            shape = max_shapes.get(spec.name) or tuple(self._context.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self._buffers[spec.name] = _cuda_check(cudart.cudaMalloc(max(nbytes, 1)))
            self._context.set_tensor_address(spec.name, self._buffers[spec.name])
            self._dtypes[spec.name] = dtype

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            for spec in self.signature.inputs:
                array = np.ascontiguousarray(inputs[spec.name])
                self._context.set_input_shape(spec.name, array.shape)
                _cuda_check(
                    cudart.cudaMemcpyAsync(
                        self._buffers[spec.name], array.ctypes.data, array.nbytes, h2d, self._stream
                    )
                )
            if not self._context.execute_async_v3(int(self._stream)):
                raise EngineError("TensorRT failed to run the engine (execute_async_v3 failed)")
            outputs = {}
            for spec in self.signature.outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                host = np.empty(shape, dtype=self._dtypes[spec.name])
                _cuda_check(
                    cudart.cudaMemcpyAsync(
                        host.ctypes.data, self._buffers[spec.name], host.nbytes, d2h, self._stream
                    )
                )
                outputs[spec.name] = host
            _cuda_check(cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def _release(self) -> None:
        for ptr in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
