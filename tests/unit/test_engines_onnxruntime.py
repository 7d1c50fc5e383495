"""The onnxruntime backend on a small ONNX model built with onnx.helper (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln_engines import EngineClosed, EngineInputError, EngineLoadError, EngineOptions, load
from kiln_engines.backends import onnxruntime as ort_backend
from kiln_engines.signature import Signature, TensorSpec
from tests.unit.onnx_models import RNG, expected, linear_model


def test_round_trip_through_offline_optimisation(tmp_path: Path) -> None:
    source = linear_model(tmp_path / "m.onnx")
    optimized = tmp_path / "m.ort.onnx"
    ort_backend.optimize(source, optimized)
    assert optimized.is_file()
    with load(optimized, "onnxruntime", EngineOptions(intra_op_threads=1)) as engine:
        assert engine.kind == "onnxruntime"
        assert engine.device == "cpu"
        assert engine.signature.describe() == "x: float32[N,4] -> y: float32[N,3]"
        for batch in (1, 7):
            x = RNG.standard_normal((batch, 4)).astype(np.float32)
            out = engine.infer({"x": x})
            assert set(out) == {"y"}
            np.testing.assert_allclose(out["y"], expected(x), rtol=1e-5, atol=1e-6)


def test_signature_metadata_wins_and_bounds_batch(tmp_path: Path) -> None:
    sig = Signature(
        (TensorSpec("x", "float32", (-1, 4)),), (TensorSpec("y", "float32", (-1, 3)),), 8
    )
    path = linear_model(tmp_path / "m.onnx", signature=sig)
    engine = load(path, "onnx")
    assert engine.signature == sig
    with pytest.raises(EngineInputError, match="maximum of 8"):
        engine.infer({"x": np.zeros((9, 4), np.float32)})


def test_inputs_are_validated_before_the_backend(tmp_path: Path) -> None:
    engine = load(linear_model(tmp_path / "m.onnx"), "onnx")
    with pytest.raises(EngineInputError) as err:
        engine.infer({"x": np.zeros((2, 5), np.float32)})
    assert "expected 4" in err.value.message
    assert "x: float32[N,4]" in err.value.message


def test_corrupt_file_is_data_loss(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(RNG.bytes(2048))
    with pytest.raises(EngineLoadError) as err:
        load(path, "onnxruntime")
    assert err.value.code == "data_loss"
    assert "corrupt or truncated" in err.value.message


def test_truncated_file_is_data_loss(tmp_path: Path) -> None:
    path = linear_model(tmp_path / "m.onnx")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineLoadError) as err:
        load(path, "onnxruntime")
    assert err.value.code == "data_loss"


def test_missing_file_and_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError) as err:
        load(tmp_path / "absent.onnx", "onnxruntime")
    assert err.value.code == "not_found"
    with pytest.raises(Exception, match="unknown engine kind 'tflite'"):
        load(linear_model(tmp_path / "m.onnx"), "tflite")


def test_cuda_without_onnxruntime_gpu_is_unavailable(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has onnxruntime-gpu")
    with pytest.raises(Exception, match="onnxruntime-gpu") as err:
        load(linear_model(tmp_path / "m.onnx"), "onnx", EngineOptions(device="cuda"))
    assert getattr(err.value, "code", None) == "unavailable"


def test_closed_engine_refuses(tmp_path: Path) -> None:
    engine = load(linear_model(tmp_path / "m.onnx"), "onnx")
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(EngineClosed):
        engine.infer({"x": np.zeros((1, 4), np.float32)})
