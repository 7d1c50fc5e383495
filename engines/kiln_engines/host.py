"""What this machine is: CPU model and NVIDIA GPUs, found without importing torch.

GPUs are found through the CUDA driver library (`libcuda.so.1`) with ctypes, so a serving host
with no torch can still tell whether a TensorRT plan or a CUDA package fits it. Results are
cached for the life of the process: hardware does not change under a running server.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from dataclasses import dataclass
from typing import Any

# CUdevice_attribute values from cuda.h; stable across CUDA releases.
_CC_MAJOR = 75
_CC_MINOR = 76


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    compute_capability: str
    """"major.minor", e.g. "9.0" for an H100."""


@dataclass(frozen=True, slots=True)
class HostInfo:
    machine: str
    cpu: str
    cpu_count: int
    gpus: tuple[Gpu, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "cpu": self.cpu,
            "cpu_count": self.cpu_count,
            "gpus": [
                {"index": g.index, "name": g.name, "compute_capability": g.compute_capability}
                for g in self.gpus
            ],
        }


@functools.cache
def host_info() -> HostInfo:
    """Describe this host (cached)."""
    return HostInfo(
        machine=platform.machine(),
        cpu=_cpu_model(),
        cpu_count=_cpu_count(),
        gpus=tuple(cuda_gpus()),
    )


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_model() -> str:
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return fallback  # not Linux: no /proc
    return fallback


@functools.cache
def cuda_gpus() -> list[Gpu]:
    """The CUDA devices the driver reports; empty without a driver or a GPU (cached)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return []
    if cuda.cuInit(0) != 0:
        return []
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    gpus = []
    for index in range(count.value):
        device = ctypes.c_int(0)
        if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
            continue
        name = ctypes.create_string_buffer(256)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        cuda.cuDeviceGetName(name, len(name), device)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
        gpus.append(
            Gpu(
                index=index,
                name=name.value.decode(errors="replace"),
                compute_capability=f"{major.value}.{minor.value}",
            )
        )
    return gpus
