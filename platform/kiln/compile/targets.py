"""The build targets: each turns the captured model into engine files for one backend.

A builder returns one `Built` per engine file (AOTInductor builds a CPU package and, on a host
with CUDA, a CUDA package too), raises `TargetUnavailable` when this host or this precision
cannot have the target (a reason, not a failure), and raises `EngineBuildFailed` (or a
`kiln_engines.EngineError`) when a build that should work does not.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.compile.export import export_program, quiet
from kiln.compile.fusion import fuse_transformer
from kiln.compile.provenance import cpu_target, gpu_target, library_versions
from kiln.compile.quantization import quantize_dynamic_int8, quantize_static_int8
from kiln.compile.text import TextModel
from kiln.errors import EngineBuildFailed
from kiln_engines import EngineOptions, Signature
from kiln_engines.backends import aotinductor as aoti_backend
from kiln_engines.backends import onnxruntime as ort_backend
from kiln_engines.backends import tensorrt as trt_backend
from kiln_engines.host import cuda_gpus
from kiln_engines.signature import SIGNATURE_METADATA_KEY

TARGETS = ("onnxruntime", "aotinductor", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


WITHOUT_ATTENTION = (
    "kept the plain export: no Attention was fused, and onnxruntime's own optimiser fuses the "
    "plain export's layer norms and GELUs too; the fused graph measured slower (fp32 0.93x, "
    "int8 0.6x at batch 1, benchmarks/text_engines.py)"
)


class TargetUnavailable(Exception):
    """This target cannot be built on this host or at this precision; the message says why."""


@dataclass
class BuildContext:
    """Everything a target builder may need, prepared once per compile."""

    workdir: Path
    module: nn.Module | None
    """The PyTorch source (None for an ONNX source: only ONNX-based targets can be built)."""
    signature: Signature
    program: torch.export.ExportedProgram | None
    example: tuple[torch.Tensor, ...]
    onnx_path: Path
    precision: str
    max_batch: int
    threads: int
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)
    """Batches of real training inputs, for INT8 calibration."""
    cache_dir: Path | None = None
    text: TextModel | None = None
    """Set for a text model: what the onnxruntime builder may assume about it."""
    transformer_fusions: bool | None = None
    """onnxruntime's transformer fusions for a transformer text model: None keeps them only
    when they fused attention, True keeps whatever they fused, False skips them."""


@dataclass
class Built:
    kind: str
    device: str
    path: Path
    options: EngineOptions
    """How to load it for parity and measurement on this host."""
    target: dict[str, Any]
    libraries: dict[str, str]
    build: dict[str, Any] = field(default_factory=dict)
    """Build settings worth recording (optimisation level, batch range, ...)."""


def _cpu_options(ctx: BuildContext) -> EngineOptions:
    return EngineOptions(device="cpu", intra_op_threads=ctx.threads, inter_op_threads=1)


def build_onnx(ctx: BuildContext) -> list[Built]:
    """The exported ONNX model itself, run by onnxruntime with online optimisation."""
    return [
        Built(
            "onnx",
            "cpu",
            ctx.onnx_path,
            _cpu_options(ctx),
            {"device": "any"},
            library_versions("torch", "onnx", "onnxscript"),
            {"opset": _opset(ctx.onnx_path)},
        )
    ]


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def build_onnxruntime(ctx: BuildContext) -> list[Built]:
    """onnxruntime's portable graph optimisations, applied offline and saved. A transformer
    text model gets onnxruntime's transformer fusions first (`kiln.compile.fusion`); int8 is
    dynamic quantisation for a text model and static, calibrated on training inputs, for any
    other (`kiln.compile.quantization`)."""
    if ctx.precision not in ("fp32", "int8"):
        raise TargetUnavailable(
            f"the onnxruntime target builds fp32 and int8, not {ctx.precision}; use --target "
            "tensorrt" + (" or aotinductor" if ctx.precision in ("bf16", "fp16") else "")
        )
    source = ctx.onnx_path
    build: dict[str, Any] = {"graph_optimization": "extended (offline) + layout (online)"}
    if ctx.text is not None and ctx.text.transformer:
        if ctx.transformer_fusions is False:
            build["transformer_fusions"] = {"applied": False, "reason": "turned off"}
        else:
            source, fusions = fuse_transformer(source, ctx.workdir / "model.fused.onnx", ctx.text)
            keep = ctx.transformer_fusions is True or fusions.get("fused", {}).get("Attention")
            if fusions["applied"] and not keep:
                source = ctx.onnx_path
                fusions = {**fusions, "applied": False, "reason": WITHOUT_ATTENTION}
            build["transformer_fusions"] = fusions
    if ctx.precision == "int8":
        quantized = ctx.workdir / "model.int8.onnx"
        if ctx.text is not None:
            build["quantization"] = quantize_dynamic_int8(source, quantized)
        elif not ctx.calibration:
            raise TargetUnavailable(
                "int8 needs calibration data: batches of real training inputs (a version "
                "trained by Kiln, or registered with --dataset)"
            )
        else:
            build["quantization"] = quantize_static_int8(
                source, quantized, ctx.calibration, ctx.workdir
            )
        source = quantized
    dest = ctx.workdir / f"model.{ctx.precision}.ort.onnx"
    ort_backend.optimize(source, dest, _cpu_options(ctx))
    return [
        Built(
            "onnxruntime",
            "cpu",
            dest,
            _cpu_options(ctx),
            cpu_target(),
            library_versions("onnxruntime", "onnx", "torch"),
            build,
        )
    ]


class _Cast(nn.Module):
    """Run a copy of the model in a reduced precision behind fp32 inputs and outputs.

    Only floating-point tensors are cast: integer inputs (ids, indices) stay as they are."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).to(dtype)
        self.dtype = dtype

    def _cast(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x.to(dtype) if x.is_floating_point() else x

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.inner(*(self._cast(x, self.dtype) for x in inputs))
        if isinstance(out, list | tuple):
            return tuple(self._cast(t, torch.float32) for t in out)
        result: torch.Tensor = self._cast(out, torch.float32)
        return result


def build_aotinductor(ctx: BuildContext) -> list[Built]:
    """torch.export ► AOTInductor .pt2 for the CPU, and for CUDA when this host has it."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if ctx.precision not in dtypes:
        raise TargetUnavailable("the aotinductor target builds fp32, bf16 and fp16, not int8")
    dtype = dtypes[ctx.precision]
    program = ctx.program
    if ctx.module is None or program is None:
        raise TargetUnavailable(
            "unavailable for an ONNX source: AOTInductor compiles PyTorch programs, and ONNX "
            "cannot be turned back into one. Register the model as a module (--module) or an "
            "exported program (--exported) to build it"
        )
    if dtype is not None:
        program = export_program(
            _Cast(ctx.module, dtype), ctx.signature, ctx.example, max_batch=ctx.max_batch
        )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    built = []
    for device in devices:
        dest = ctx.workdir / f"model.{device}.pt2"
        device_program = program if device == "cpu" else _on_cuda(ctx, dtype)
        _compile_package(device_program, ctx.signature, dest)
        if device == "cpu":
            isa = torch.backends.cpu.get_cpu_capability()
            options = _cpu_options(ctx)
            target = cpu_target(isa=isa)
        else:
            gpu = cuda_gpus()[0]
            options = EngineOptions(device="cuda")
            target = gpu_target(gpu)
        built.append(
            Built(
                "aotinductor",
                device,
                dest,
                options,
                target,
                library_versions("torch"),
                {"dtype": str(dtype or torch.float32).removeprefix("torch.")},
            )
        )
    return built


def _on_cuda(ctx: BuildContext, dtype: torch.dtype | None) -> torch.export.ExportedProgram:
    assert ctx.module is not None  # build_aotinductor checked
    module = copy.deepcopy(ctx.module).to("cuda")
    if dtype is not None:
        module = _Cast(module, dtype)
    example = tuple(t.to("cuda") for t in ctx.example)
    return export_program(module, ctx.signature, example, max_batch=ctx.max_batch)


def _has_scan(program: torch.export.ExportedProgram) -> bool:
    scan = getattr(torch.ops.higher_order, "scan", None)
    return any(
        node.target is scan
        for module in program.graph_module.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
    )


def _compile_package(
    program: torch.export.ExportedProgram, signature: Signature, dest: Path
) -> None:
    metadata = {SIGNATURE_METADATA_KEY: json.dumps(signature.to_dict(), sort_keys=True)}
    try:
        with quiet():
            torch._inductor.aoti_compile_and_package(
                program,
                package_path=str(dest),
                inductor_configs={"aot_inductor.metadata": metadata},
            )
    except Exception as exc:
        if _has_scan(program):
            # Inductor lowers a scan to a while loop whose output buffer it sizes from the
            # scan's length alone; a dynamic batch axis in the outputs has no binding there
            # (torch 2.13: "KeyError: s43").
            raise EngineBuildFailed(
                f"AOTInductor could not compile the model's scan (a recurrence, such as the "
                f"gru builder's) with a dynamic batch axis: {str(exc).splitlines()[0][:200]}; "
                f"this torch ({torch.__version__}) cannot; use --target onnxruntime, whose ONNX "
                "Scan takes any batch and length"
            ) from exc
        raise EngineBuildFailed(
            f"AOTInductor could not compile the model: {str(exc).splitlines()[0][:300]}. "
            "It needs a working C++ compiler (g++) and, for CUDA, the CUDA toolkit"
        ) from exc
    # The package's own metadata is what the loader trusts; read it back as a check.
    aoti_backend.read_metadata(dest)


def build_tensorrt(ctx: BuildContext) -> list[Built]:
    """ONNX ► TensorRT plan for this host's GPU, in a Kiln plan file carrying the ONNX."""
    status = trt_backend.status()
    if not status.usable:
        hint = f"; {status.how_to_get}" if status.how_to_get else ""
        raise TargetUnavailable(f"{status.reason}{hint}")
    gpu = cuda_gpus()[0]
    dest = ctx.workdir / "model.plan"
    config = trt_backend.BuildConfig(precision=ctx.precision, max_batch=ctx.max_batch)
    header = trt_backend.build_plan_file(
        ctx.onnx_path,
        dest,
        ctx.signature,
        config,
        calibration=ctx.calibration if ctx.precision == "int8" else None,
        cache_dir=ctx.cache_dir,
    )
    return [
        Built(
            "tensorrt",
            "cuda",
            dest,
            EngineOptions(device="cuda", cache_dir=ctx.cache_dir),
            gpu_target(gpu),
            {**library_versions("onnx", "torch"), "tensorrt": header.tensorrt_version},
            {
                "precision": header.precision,
                "batch_range": [header.min_batch, header.opt_batch, header.max_batch],
            },
        )
    ]


BUILDERS: Mapping[str, Callable[[BuildContext], list[Built]]] = {
    "onnx": build_onnx,
    "onnxruntime": build_onnxruntime,
    "aotinductor": build_aotinductor,
    "tensorrt": build_tensorrt,
}
