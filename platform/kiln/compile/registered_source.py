"""Compile a version registered by `kiln register`: reopen its source, judge every engine
against the source itself.

- module: rebuilt from the builder and the stored weights; reference: fp32 eager.
- exported: `torch.export.load(...)`, compiled from the program as saved (not re-captured);
  reference: the program's module in fp32 eager.
- onnx: `kiln.compile.onnx_source`; reference: `onnx.reference.ReferenceEvaluator` (or
  onnxruntime with optimisations off where it cannot run an operator).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compile.held_out import HeldOut, for_signature
from kiln.compile.onnx_source import compile_onnx
from kiln.compile.pipeline import CompileOptions, CompileReport, Progress, compile_module
from kiln.errors import EngineBuildFailed, ReferenceFailed
from kiln.registry.records import ModelVersion
from kiln.settings import Settings
from kiln.sources import open_version_source
from kiln.sources.loading import LoadedSource
from kiln_engines import Signature


def compile_source(
    version: ModelVersion,
    blob: Path,
    options: CompileOptions,
    settings: Settings,
    workdir: Path,
    progress: Progress,
) -> tuple[CompileReport, list[str]]:
    """Build and verify `options.targets` for the registered source stored at `blob`; the
    report and notes on what the verification could not use."""
    config = version.config
    progress(f"loading the {config['source'].get('kind')} source of {version.ref}")
    source = open_version_source(config, blob)
    signature = source.signature
    notes: list[str] = []
    if signature.max_batch is not None and options.max_batch > signature.max_batch:
        notes.append(
            f"{version.ref} declares a maximum batch of {signature.max_batch}; the engines "
            f"were built for that, not --max-batch {options.max_batch}"
        )
        options = dataclasses.replace(options, max_batch=signature.max_batch)
    held_out = for_signature(config, version.ref, signature, settings, options.parity_samples)
    notes += held_out.notes
    try:
        return _compile(source, signature, held_out, workdir, options, progress, config), notes
    except ReferenceFailed as exc:
        integers = [s.name for s in signature.inputs if np.dtype(s.dtype).kind in "iu"]
        if config.get("dataset") or not integers:
            raise
        ranges = " ".join(f"--input-range {n}=LOW:HIGH" for n in integers)
        raise EngineBuildFailed(
            f"{exc.message}. {version.ref} was registered without --dataset, so parity drew "
            f"its integer inputs from {config.get('input_ranges') or '0..9'}; register it again "
            f"with the values they may take ({ranges}, e.g. ids=0:19 for an embedding of 20 "
            "rows) or with --dataset"
        ) from exc


def _compile(
    source: LoadedSource,
    signature: Signature,
    held_out: HeldOut,
    workdir: Path,
    options: CompileOptions,
    progress: Progress,
    config: Mapping[str, Any],
) -> CompileReport:
    task = str(config.get("task", "classification"))
    if source.onnx_model is not None:
        return compile_onnx(
            source.onnx_model,
            signature,
            held_out.inputs,
            workdir,
            options,
            reference=source.reference(),
            reference_name=lambda: source.reference_name,
            calibration=held_out.calibration,
            progress=progress,
            task=task,
        )
    assert source.module is not None
    return compile_module(
        source.module,
        signature,
        held_out.inputs,
        workdir,
        options,
        calibration=held_out.calibration,
        progress=progress,
        task=task,
        program=source.program,
    )
