"""int8 for the onnxruntime target: static (calibrated) or dynamic quantisation of an ONNX file.

- Static QDQ (image and tabular models): int8 weights per channel, uint8 activations whose
  ranges come from batches of real training inputs (MinMax calibration).
- Dynamic (text models): int8 weights of every MatMul/Gemm with a constant weight (and fused
  Attention nodes), activations quantised per call from their own range, so no calibration
  data is needed. Activation ranges in an encoder vary from text to text (a long review has
  other extremes than a short one), which a fixed calibrated range serves badly.

Weights get 7 bits (`reduce_range`): always for static quantisation, and for dynamic on CPUs
without VNNI, where AVX2's u8 x s8 dot product (vpmaddubsw) saturates at int16 when full-range
weights meet large activations.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compile.export import quiet
from kiln.errors import EngineBuildFailed

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention")
"""What dynamic quantisation rewrites: the weight products (and fused attention's)."""


def has_vnni() -> bool:
    """Whether this CPU has an int8 dot product that does not saturate (AVX-512 VNNI or
    AVX-VNNI)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


@contextlib.contextmanager
def _no_advice() -> Iterator[None]:
    """The quantizer advises pre-processing through the root logger on every call; the
    advice is about static quantisation's shape inference, which dynamic does without."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _copy_metadata(source: Path, dest: Path) -> None:
    """Quantisation rewrites the model; carry the signature (and other props) over."""
    import onnx

    source_props = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    model = onnx.load(str(dest))
    onnx.helper.set_model_props(model, source_props)
    onnx.save(model, str(dest))


def quantize_static_int8(
    source: Path, dest: Path, calibration: Sequence[dict[str, np.ndarray]], workdir: Path
) -> dict[str, Any]:
    """Static QDQ quantisation of `source` to `dest`, calibrated on `calibration` batches;
    what was done, for the build report."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    prepared = workdir / "model.preprocessed.onnx"
    try:
        with quiet():
            quant_pre_process(str(source), str(prepared))
            quantize_static(
                str(prepared),
                str(dest),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    except Exception as exc:
        raise EngineBuildFailed(f"onnxruntime int8 quantization failed: {exc}") from exc
    _copy_metadata(source, dest)
    samples = sum(next(iter(b.values())).shape[0] for b in calibration)
    return {
        "method": "static QDQ, int8 weights per channel (7-bit), uint8 activations, MinMax",
        "calibration_samples": samples,
    }


def quantize_dynamic_int8(source: Path, dest: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of `source` to `dest` (no calibration); what was done and
    how many nodes of each kind were quantised, for the build report."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce_range = not has_vnni()
    try:
        with quiet(), _no_advice():
            quantize_dynamic(
                str(source),
                str(dest),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(DYNAMIC_OP_TYPES),
                per_channel=False,
                reduce_range=reduce_range,
                extra_options={"MatMulConstBOnly": True},
            )
    except Exception as exc:
        raise EngineBuildFailed(f"onnxruntime dynamic int8 quantization failed: {exc}") from exc
    _copy_metadata(source, dest)
    counts: dict[str, int] = {}
    for node in onnx.load(str(dest)).graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        raise EngineBuildFailed(
            "dynamic int8 quantization found no MatMul, Gemm or Attention with constant "
            "weights to quantize; compile this model at --precision fp32"
        )
    bits = "7-bit (no VNNI on this CPU)" if reduce_range else "8-bit"
    return {
        "method": f"dynamic, int8 weights per tensor ({bits}), uint8 activations scaled per "
        "call; no calibration",
        "op_types": list(DYNAMIC_OP_TYPES),
        "quantized_nodes": counts,
    }
