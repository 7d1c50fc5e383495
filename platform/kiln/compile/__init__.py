"""Compilation: torch ► ONNX export, engine builds and parity verification.

`compile_version(registry, ref, options, settings)` compiles a registered version and registers
the engines that pass parity; `compile_module(module, signature, held_out, workdir, options)`
is the same core for any `nn.Module` (tests, benchmarks). Importing this package imports torch.
"""

from __future__ import annotations

from kiln.compile.parity import THRESHOLDS, ParityReport, Thresholds
from kiln.compile.performance import Performance
from kiln.compile.pipeline import (
    CompileOptions,
    CompileReport,
    Speedup,
    TargetResult,
    compile_module,
)
from kiln.compile.registered import RegisteredCompile, compile_version, signature_of
from kiln.compile.targets import PRECISIONS, TARGETS

__all__ = [
    "PRECISIONS",
    "TARGETS",
    "THRESHOLDS",
    "CompileOptions",
    "CompileReport",
    "ParityReport",
    "Performance",
    "RegisteredCompile",
    "Speedup",
    "TargetResult",
    "Thresholds",
    "compile_module",
    "compile_version",
    "signature_of",
]
