"""Compile an ONNX source: the user's ONNX file in, verified onnxruntime (and TensorRT) engines
out, each judged against the file run by the ONNX reference evaluator.

There is no PyTorch model behind an ONNX source, so the targets are the ones built from ONNX:
the `onnx` artifact (the source itself with Kiln's signature stamped into its metadata, its
graph untouched), `onnxruntime` (fp32 graph optimisations, or int8 static quantization
calibrated on the registered data set's training split) and `tensorrt` (on a GPU host with
TensorRT). AOTInductor is reported unavailable: it compiles PyTorch programs only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from kiln.compile.parity import run_batched
from kiln.compile.pipeline import (
    CompileOptions,
    CompileReport,
    Progress,
    build_context,
    build_targets,
    reference_pairs,
)
from kiln_engines import Signature
from kiln_engines.signature import SIGNATURE_METADATA_KEY

REFERENCE_BATCH = 64
"""Rows per reference-evaluator call: it is pure Python and numpy, so small batches are fine."""


def stamp_signature(source: onnx.ModelProto, signature: Signature, dest: Path) -> None:
    """Write `source` to `dest` as one file carrying `signature` (its graph unchanged)."""
    model = onnx.ModelProto()
    model.CopyFrom(source)
    props = {p.key: p.value for p in model.metadata_props}
    props[SIGNATURE_METADATA_KEY] = json.dumps(signature.to_dict(), sort_keys=True)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dest), save_as_external_data=False)


def compile_onnx(  # noqa: PLR0913
    source: onnx.ModelProto,
    signature: Signature,
    held_out: Mapping[str, np.ndarray],
    workdir: Path,
    options: CompileOptions,
    *,
    reference: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    reference_name: Callable[[], str],
    calibration: Mapping[str, np.ndarray] | None = None,
    progress: Progress = lambda _: None,
    task: str = "classification",
) -> CompileReport:
    """Build and verify every requested target for the ONNX model `source`.

    `reference` runs the source as parity's reference; `reference_name` says, after the
    run, what it was (the evaluator, or onnxruntime unoptimised where the evaluator fell
    short). Per-target problems are reported in the results, as for `compile_module`.
    """
    options.validate()
    signature = signature.with_max_batch(options.max_batch)
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / "model.onnx"
    stamp_signature(source, signature, onnx_path)

    progress("computing reference outputs (the ONNX file, onnx.reference)")
    references = reference_pairs(
        lambda inputs: run_batched(reference, inputs, REFERENCE_BATCH),
        signature,
        held_out,
        options,
    )
    targets = list(options.targets)
    if options.precision == "fp32":
        targets.insert(0, "onnx")
    ctx = build_context(workdir, signature, onnx_path, options, calibration)
    results = build_targets(targets, ctx, references, options, progress, task)
    return CompileReport(
        signature,
        options.precision,
        options.max_batch,
        results,
        None,
        task=task,
        reference=reference_name(),
    )
