"""Every backend that runs here round-trips the trainer's cnn, mlp and resnet with parity.

One AOTInductor compile per builder (each ~10-20 s of C++ on 2 cores), so this module is slow.
Weights are freshly initialised: parity is about the function, not about accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.compile import CompileOptions, compile_module
from kiln.train import build_model
from kiln_engines import Signature, TensorSpec, load

IMAGE = Signature(
    (TensorSpec("input", "float32", (-1, 1, 28, 28)),), (TensorSpec("logits", "float32", (-1, 10)),)
)
HELD_OUT = {"input": np.random.default_rng(0).random((96, 1, 28, 28), dtype=np.float32)}


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["cnn", "mlp", "resnet"])
def test_builder_round_trips_every_local_backend(builder: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = build_model(builder, (1, 28, 28), 10)
    report = compile_module(
        module,
        IMAGE,
        HELD_OUT,
        tmp_path,
        CompileOptions(
            targets=("onnxruntime", "aotinductor", "tensorrt"),
            max_batch=16,
            threads=1,
            random_samples=32,
            measure_seconds=0.2,
        ),
    )
    by_kind = {(r.kind, r.device): r for r in report.results}
    for key in (("onnx", "cpu"), ("onnxruntime", "cpu"), ("aotinductor", "cpu")):
        result = by_kind[key]
        assert result.status == "passed", result.reason
        assert result.parity is not None
        assert result.parity.passed
        held = result.parity.held_out[0]
        assert held.top1_agreement == 1.0
        assert held.max_abs_diff <= 1e-4
        assert result.parity.random[0].max_abs_diff <= 1e-4
        assert result.performance is not None
        assert result.performance.latency_ms_p50 > 0
        assert result.libraries["kiln"]
        assert result.target["device"] in ("cpu", "any")
    if not _tensorrt_importable():
        trt = next(r for r in report.results if r.kind == "tensorrt")
        assert trt.status == "unavailable"
        assert "kiln[tensorrt]" in (trt.reason or "")
    assert report.eager is not None

    # The built files are self-contained: load them again exactly as serving would.
    aoti = by_kind[("aotinductor", "cpu")]
    assert aoti.path is not None
    with load(aoti.path, "aotinductor") as engine, torch.no_grad():
        x = HELD_OUT["input"][:3]
        np.testing.assert_allclose(
            engine.infer({"input": x})["logits"],
            module.eval()(torch.from_numpy(x)).numpy(),
            atol=1e-4,
        )
        assert engine.signature.max_batch == 16
