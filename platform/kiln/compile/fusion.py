"""Transformer graph fusions for the onnxruntime target (`onnxruntime.transformers.optimizer`).

onnxruntime's own graph optimiser fuses little of an encoder exported by torch.export:
the transformer optimiser, in Python, recognises BERT's patterns (attention, layer norm with
its residual add, GELU with its bias, embeddings) and replaces each with one contrib operator
that the CPU provider runs as one kernel. It is best effort by design: a pattern it does not
recognise stays as it was.

So this step never fails a build. The fused graph is kept only when something was fused,
its inputs and outputs are the export's, and it computes what the export computes (checked
with onnxruntime on random token sequences at two lengths); otherwise the plain export is
used and the build report says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compile.export import quiet
from kiln.compile.text import TextModel, random_text_inputs
from kiln.text import INPUT_IDS

FUSION_TOLERANCE = 1e-5
"""Largest difference the fused graph may have from the plain one on the probe texts: fused
kernels reorder float sums (~1e-6 on logits), a wrong fusion changes logits by far more."""

PROBE_LENGTHS = (7, 33)


def _run(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return [np.asarray(session.run(None, feed)[0]) for feed in feeds]


def _probes(text: TextModel) -> list[dict[str, np.ndarray]]:
    probes = []
    for length in PROBE_LENGTHS:
        width = min(length, text.max_length)
        like = {INPUT_IDS: np.zeros((1, 2 * width), np.int64)}  # second_length halves it
        probes.append(random_text_inputs(text, like, 8, seed=width))
    return probes


def _io(model: Any) -> list[tuple[str, int]]:
    graph = model.graph
    return [(v.name, v.type.tensor_type.elem_type) for v in (*graph.input, *graph.output)]


def fuse_transformer(source: Path, dest: Path, text: TextModel) -> tuple[Path, dict[str, Any]]:
    """Fuse `source`'s transformer patterns into `dest`. Returns the graph to build from
    (`dest`, or `source` when fusing did not help) and the build report's account of it."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    report: dict[str, Any] = {
        "optimizer": "onnxruntime.transformers (model_type bert)",
        "num_heads": text.num_heads or "detected",
        "hidden_size": text.hidden_size or "detected",
    }
    # The optimiser logs every pattern it looks for and does not find.
    logger = logging.getLogger("onnxruntime.transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet():
            optimized = optimize_model(
                str(source),
                model_type="bert",
                num_heads=text.num_heads,
                hidden_size=text.hidden_size,
                opt_level=0,  # Python fusions only: Kiln's own step applies onnxruntime's
            )
            stats = optimized.get_fused_operator_statistics()
    except Exception as exc:  # best effort: any failure keeps the plain graph
        return source, {**report, "applied": False, "reason": f"optimizer failed: {exc}"[:300]}
    finally:
        logger.setLevel(level)
    fused = {op: int(n) for op, n in stats.items() if n}
    report["fused"] = fused
    plain = onnx.load(str(source))
    if not fused:
        return source, {**report, "applied": False, "reason": "no transformer pattern found"}
    if _io(optimized.model) != _io(plain):
        return source, {
            **report,
            "applied": False,
            "reason": "the fused graph changed the model's inputs or outputs",
        }
    onnx.helper.set_model_props(optimized.model, {p.key: p.value for p in plain.metadata_props})
    # The fused operators live in onnxruntime's contrib domain, which the optimiser does not
    # always declare; quantisation's shape inference refuses undeclared domains.
    domains = {o.domain for o in optimized.model.opset_import}
    if "com.microsoft" not in domains:
        optimized.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(optimized.model, str(dest))
    probes = _probes(text)
    try:
        diff = max(
            float(np.abs(a - b).max())
            for a, b in zip(_run(source, probes), _run(dest, probes), strict=True)
        )
    except Exception as exc:
        dest.unlink(missing_ok=True)
        return source, {**report, "applied": False, "reason": f"fused graph fails: {exc}"[:300]}
    report["max_abs_diff_vs_plain"] = diff
    if not diff <= FUSION_TOLERANCE:
        dest.unlink(missing_ok=True)
        return source, {
            **report,
            "applied": False,
            "reason": f"the fused graph's outputs differ by {diff:.2g} > {FUSION_TOLERANCE:g}",
        }
    return dest, {**report, "applied": True}
