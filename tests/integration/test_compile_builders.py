"""Every backend that runs here round-trips the trainer's cnn, mlp and resnet with parity.

One AOTInductor compile per builder (each ~10-20 s of C++ on 2 cores), so this module is slow.
Weights are freshly initialised: parity is about the function, not about accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A cnn trained for 3 epochs on the UCI digits: confident logits, as a real model has."""
    from kiln.settings import Settings
    from kiln.train import TrainConfig, train

    home = tmp_path_factory.mktemp("home")
    config = TrainConfig(dataset="digits", model="cnn", epochs=3, threads=1)
    return train(config, Settings(home=home), show_progress=False)


def _compile_trained(trained: Any, workdir: Path, target: str, precision: str) -> Any:
    from kiln.compile import signature_of
    from kiln.train import load_checkpoint

    report = compile_module(
        load_checkpoint(trained.checkpoint).model,
        signature_of(trained.config),
        {"input": trained.dataset.test.x},
        workdir,
        CompileOptions(targets=(target,), precision=precision, max_batch=32, measure_seconds=0),
        calibration={"input": trained.dataset.train.x},
    )
    [result] = report.results
    assert result.kind == target
    assert result.status == "passed", result.reason
    assert result.parity is not None
    assert result.parity.thresholds.max_abs_diff is None  # reduced precision: top-1 is gated
    top1 = result.parity.held_out[0].top1_agreement
    assert top1 is not None
    assert top1 >= 0.995
    return result


@pytest.mark.slow
def test_int8_onnxruntime_keeps_top1_on_held_out_data(trained_digits: Any, tmp_path: Path) -> None:
    """Static int8 quantization, calibrated on training inputs."""
    result = _compile_trained(trained_digits, tmp_path, "onnxruntime", "int8")
    assert result.build["quantization"]["calibration_samples"] > 0


@pytest.mark.slow
def test_bf16_aotinductor_keeps_top1_on_held_out_data(trained_digits: Any, tmp_path: Path) -> None:
    """The model runs in bf16 behind fp32 inputs and outputs."""
    result = _compile_trained(trained_digits, tmp_path, "aotinductor", "bf16")
    assert result.build["dtype"] == "bfloat16"
