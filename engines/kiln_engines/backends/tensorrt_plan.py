"""The Kiln TensorRT plan file: a JSON header, the serialized plan, and what rebuilds it.

A TensorRT plan runs only on the GPU model and TensorRT version that built it. Kiln's plan file
says which those were, so a host can tell *before* handing bytes to TensorRT whether the plan
fits, and carries the ONNX model (and the INT8 calibration cache, if any) it was built from, so
a host with a builder can rebuild it instead of failing. Layout::

    b"KILNTRT1" | header length (u32, little-endian) | header (UTF-8 JSON) | sections

Each section (plan, onnx, calibration_cache) is located by offset and size in the header and
verified by its sha256, so truncation and corruption are reported as such. `batched_shape`
gives an input's shape at a size in the plan's batch range (the builder's optimisation profile
and the runtime's buffers both need it). This module is pure Python: it is tested on hosts
without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln_engines.errors import BackendBuildError, EngineLoadError
from kiln_engines.host import Gpu
from kiln_engines.signature import DYNAMIC, Signature

MAGIC = b"KILNTRT1"
_LENGTH = struct.Struct("<I")
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PlanHeader:
    """Where and with what a plan was built, and for which inputs."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    signature: Signature

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "min_batch": self.min_batch,
            "opt_batch": self.opt_batch,
            "max_batch": self.max_batch,
            "signature": self.signature.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanHeader:
        return cls(
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=str(data["compute_capability"]),
            precision=str(data["precision"]),
            min_batch=int(data["min_batch"]),
            opt_batch=int(data["opt_batch"]),
            max_batch=int(data["max_batch"]),
            signature=Signature.from_dict(data["signature"]),
        )

    def describe_target(self) -> str:
        return (
            f"{self.gpu_name} (compute capability {self.compute_capability}) "
            f"with TensorRT {self.tensorrt_version}"
        )


@dataclass(frozen=True, slots=True)
class PlanFile:
    header: PlanHeader
    plan: bytes
    onnx: bytes | None = None
    calibration_cache: bytes | None = None
    sections: dict[str, str] = field(default_factory=dict)
    """Section name -> sha256, as recorded in the file."""


def write_plan_file(
    path: Path,
    header: PlanHeader,
    plan: bytes,
    onnx: bytes | None = None,
    calibration_cache: bytes | None = None,
) -> None:
    """Write a plan file atomically (temporary name, then rename)."""
    sections: dict[str, dict[str, Any]] = {}
    payload = bytearray()
    for name, blob in (("plan", plan), ("onnx", onnx), ("calibration_cache", calibration_cache)):
        if blob is None:
            continue
        sections[name] = {
            "offset": len(payload),
            "size": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        payload += blob
    meta = {"format": FORMAT_VERSION, **header.to_dict(), "sections": sections}
    encoded = json.dumps(meta, sort_keys=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(_LENGTH.pack(len(encoded)))
        f.write(encoded)
        f.write(payload)
    os.replace(tmp, path)


def read_plan_file(path: Path) -> PlanFile:
    """Read and verify a plan file; `EngineLoadError` (data_loss) names what is wrong."""
    data = path.read_bytes()

    def damaged(problem: str) -> EngineLoadError:
        return EngineLoadError(
            f"{path} is not a usable Kiln TensorRT plan: {problem}. Rebuild it with "
            "`kiln compile --target tensorrt`"
        )

    if not data.startswith(MAGIC):
        raise damaged("it does not start with the Kiln plan signature (wrong file, or damaged)")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise damaged("the file is truncated inside its header")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if len(data) < start + length:
        raise damaged("the file is truncated inside its header")
    try:
        meta = json.loads(data[start : start + length])
        header = PlanHeader.from_dict(meta)
        sections = meta["sections"]
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(f"its header is unreadable ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise EngineLoadError(
            f"{path} uses plan file format {meta.get('format')}; this Kiln reads format "
            f"{FORMAT_VERSION}. Rebuild it with `kiln compile --target tensorrt`",
            code="failed_precondition",
        )
    payload = memoryview(data)[start + length :]
    blobs: dict[str, bytes] = {}
    for name, where in sections.items():
        offset, size = int(where["offset"]), int(where["size"])
        if offset + size > len(payload):
            raise damaged(f"the file is truncated: section '{name}' ends past the end of the file")
        blob = bytes(payload[offset : offset + size])
        if hashlib.sha256(blob).hexdigest() != where["sha256"]:
            raise damaged(f"section '{name}' does not match its sha256 (corrupted bytes)")
        blobs[name] = blob
    if "plan" not in blobs:
        raise damaged("it holds no plan section")
    return PlanFile(
        header=header,
        plan=blobs["plan"],
        onnx=blobs.get("onnx"),
        calibration_cache=blobs.get("calibration_cache"),
        sections={name: str(where["sha256"]) for name, where in sections.items()},
    )


def mismatch(header: PlanHeader, gpu: Gpu, tensorrt_version: str) -> str | None:
    """Why a plan cannot run on `gpu` with `tensorrt_version`, or None when it can.

    TensorRT plans are specific to the GPU model and the exact TensorRT version that built them.
    """
    reasons = []
    if header.tensorrt_version != tensorrt_version:
        reasons.append(
            f"TensorRT {header.tensorrt_version} built it, this host has {tensorrt_version}"
        )
    if header.compute_capability != gpu.compute_capability or header.gpu_name != gpu.name:
        reasons.append(
            f"it was built for {header.gpu_name} (compute capability "
            f"{header.compute_capability}), this host has {gpu.name} "
            f"(compute capability {gpu.compute_capability})"
        )
    return "; ".join(reasons) or None


def batched_shape(signature: Signature, name: str, batch: int) -> tuple[int, ...]:
    """Input `name`'s shape at `batch` rows (for optimisation profiles and device buffers).

    Raises `BackendBuildError` for an input with dynamic dimensions besides the batch axis.
    """
    spec = next(s for s in signature.inputs if s.name == name)
    rest = spec.shape[1:]
    if DYNAMIC in rest:
        raise BackendBuildError(
            f"input '{name}' has dynamic dimensions besides the batch axis ({list(spec.shape)}); "
            "Kiln's TensorRT builder supports a dynamic batch axis only: export the model with "
            "fixed sizes for the other axes"
        )
    return (batch, *rest) if spec.shape and spec.shape[0] == DYNAMIC else spec.shape
