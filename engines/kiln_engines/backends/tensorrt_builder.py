"""Building TensorRT plans: ONNX parser ► builder config ► serialized plan.

Written against TensorRT 10's documented Python API (`build_serialized_network`, memory pool
limits, optimisation profiles for the batch range, a timing cache) and tolerant of TensorRT
11, which removed the weak-typing precision flags and the INT8 calibrator: on 11, fp32 builds
work and reduced precision is refused with a message that says what to do instead.
`build_plan_file` writes the Kiln plan file (`tensorrt_plan`) that carries the ONNX model, so
a host with another GPU can rebuild the plan (`tensorrt`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln_engines.backends.tensorrt_cuda import (
    cuda_check,
    cuda_device,
    import_cudart,
    import_tensorrt,
)
from kiln_engines.backends.tensorrt_plan import PlanHeader, batched_shape, write_plan_file
from kiln_engines.errors import BackendBuildError, BackendUnavailable, EngineConfigError
from kiln_engines.host import Gpu
from kiln_engines.signature import Signature

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """How to build a plan: precision, the batch range it is tuned for, the device."""

    precision: str = "fp32"
    max_batch: int = 64
    opt_batch: int | None = None
    """The batch size TensorRT tunes kernels for; default: max_batch (a busy batcher fills it)."""
    min_batch: int = 1
    workspace_bytes: int | None = None
    device_index: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineConfigError(
                f"TensorRT precision {self.precision!r} is not one Kiln builds: pass one of "
                f"{', '.join(PRECISIONS)} (kiln compile --precision fp16)"
            )
        opt = self.opt_batch or self.max_batch
        if not 1 <= self.min_batch <= opt <= self.max_batch:
            raise EngineConfigError(
                f"TensorRT batch sizes min_batch={self.min_batch}, opt_batch={opt}, "
                f"max_batch={self.max_batch} must satisfy 1 <= min_batch <= opt_batch <= "
                "max_batch: raise max_batch (kiln compile --max-batch) or lower the others"
            )


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
        raise BackendBuildError(
            f"TensorRT {trt.__version__} builds only strongly typed networks, so {precision} "
            "cannot be switched on with a builder flag: convert the ONNX model to mixed precision "
            "first (NVIDIA ModelOpt AutoCast, or Q/DQ nodes for int8), or build fp32, or use "
            "TensorRT 10"
        )
    major = int(gpu.compute_capability.split(".")[0])
    if precision == "bf16" and major < 8:
        raise BackendBuildError(
            f"{gpu.name} (compute capability {gpu.compute_capability}) has no bf16 support; "
            "bf16 needs compute capability 8.0 or newer. Use --precision fp16"
        )
    if precision == "fp16" and not getattr(builder, "platform_has_fast_fp16", True):
        raise BackendBuildError(f"{gpu.name} has no fast fp16; use --precision fp32")
    if precision == "int8" and not getattr(builder, "platform_has_fast_int8", True):
        raise BackendBuildError(f"{gpu.name} has no fast int8; use --precision fp16 or fp32")
    for flag in wanted:
        if hasattr(flags, flag):
            config.set_flag(getattr(flags, flag))


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
                            cuda_check(cudart.cudaFree(ptr))
                        ptr = cuda_check(cudart.cudaMalloc(array.nbytes))
                        self._device[name] = (ptr, array.nbytes)
                    cuda_check(
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


def build_plan(  # noqa: PLR0915
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
    Raises `BackendBuildError` naming the parser's or builder's complaint.
    """
    trt = import_tensorrt()
    cudart = import_cudart()
    if not hasattr(trt, "Builder"):
        raise BackendUnavailable(
            f"this TensorRT {trt.__version__} install is runtime-only and cannot build plans; "
            "install the full tensorrt package"
        )
    gpu = cuda_device(config.device_index)
    cuda_check(cudart.cudaSetDevice(config.device_index))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendBuildError(f"TensorRT's ONNX parser rejected the model: {errors}")

    builder_config = builder.create_builder_config()
    if config.workspace_bytes:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    _set_precision(trt, builder, builder_config, config.precision, gpu)

    opt = config.opt_batch or config.max_batch
    profile = builder.create_optimization_profile()
    for spec in signature.inputs:
        profile.set_shape(
            spec.name,
            batched_shape(signature, spec.name, config.min_batch),
            batched_shape(signature, spec.name, opt),
            batched_shape(signature, spec.name, config.max_batch),
        )
    builder_config.add_optimization_profile(profile)

    calibrator = None
    if config.precision == "int8":
        batches = list(calibration or [])
        if not batches and calibration_cache is None:
            raise BackendBuildError(
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
        raise BackendBuildError(
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
