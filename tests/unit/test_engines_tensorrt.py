"""TensorRT: the plan file and the wrong-GPU decision run everywhere; real builds need a GPU.

Kiln's CI machines have no NVIDIA GPU and cannot install TensorRT (its -libs wheels download
from NVIDIA's own index, which CI cannot reach), so a plan "for the wrong GPU" is simulated
through its header: the decision to rebuild or refuse is made from the header before
TensorRT sees any bytes, and that decision is what these tests exercise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln_engines import (
    BackendBuildError,
    BackendUnavailable,
    EngineConfigError,
    EngineLoadError,
    EngineOptions,
    load,
)
from kiln_engines.backends import tensorrt as trt_backend
from kiln_engines.backends.tensorrt_plan import (
    PlanFile,
    PlanHeader,
    batched_shape,
    mismatch,
    read_plan_file,
    write_plan_file,
)
from kiln_engines.host import Gpu, cuda_gpus
from kiln_engines.signature import Signature, TensorSpec
from tests.unit.onnx_models import expected, linear_model

SIG = Signature((TensorSpec("x", "float32", (-1, 4)),), (TensorSpec("y", "float32", (-1, 3)),), 32)
A100 = Gpu(0, "NVIDIA A100-SXM4-80GB", "8.0")
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", "9.0")
HEADER = PlanHeader("10.8.0", A100.name, A100.compute_capability, "fp16", 1, 32, 32, SIG)


def plan_file(tmp_path: Path, onnx: bytes | None = b"onnx-model-bytes") -> Path:
    path = tmp_path / "model.plan"
    write_plan_file(path, HEADER, b"serialized-plan" * 100, onnx=onnx, calibration_cache=None)
    return path


def test_plan_file_round_trip(tmp_path: Path) -> None:
    read = read_plan_file(plan_file(tmp_path))
    assert read.header == HEADER
    assert read.plan == b"serialized-plan" * 100
    assert read.onnx == b"onnx-model-bytes"
    assert read.calibration_cache is None
    assert set(read.sections) == {"plan", "onnx"}


@pytest.mark.parametrize("keep", [4, 20, 200, -10])
def test_truncated_plan_is_data_loss(tmp_path: Path, keep: int) -> None:
    path = plan_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(EngineLoadError) as err:
        read_plan_file(path)
    assert err.value.code == "data_loss"
    assert "kiln compile --target tensorrt" in err.value.message


def test_corrupted_plan_bytes_are_data_loss(tmp_path: Path) -> None:
    path = plan_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineLoadError, match="does not match its sha256") as err:
        read_plan_file(path)
    assert err.value.code == "data_loss"


def test_not_a_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "x.plan"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(EngineLoadError, match="Kiln plan signature"):
        read_plan_file(path)


def test_mismatch_names_both_gpus_and_versions() -> None:
    assert mismatch(HEADER, A100, "10.8.0") is None
    problem = mismatch(HEADER, H100, "10.9.0")
    assert problem is not None
    assert "TensorRT 10.8.0 built it, this host has 10.9.0" in problem
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in problem
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in problem


def test_plan_for_the_wrong_gpu_without_a_builder_is_a_clear_error(tmp_path: Path) -> None:
    path = plan_file(tmp_path)
    with pytest.raises(EngineLoadError) as err:
        trt_backend.plan_for_host(
            read_plan_file(path), path, H100, "10.8.0", rebuild=None, why_no_rebuild="runtime-only"
        )
    assert err.value.code == "failed_precondition"
    assert "cannot run here" in err.value.message
    assert "built for NVIDIA A100" in err.value.message
    assert "runtime-only" in err.value.message
    assert "kiln compile REF --target tensorrt" in err.value.message


def test_plan_for_the_wrong_gpu_is_rebuilt_from_its_onnx(tmp_path: Path) -> None:
    path = plan_file(tmp_path)
    seen: list[PlanFile] = []

    def rebuild(pf: PlanFile) -> bytes:
        seen.append(pf)
        return b"rebuilt-for-h100"

    plan = trt_backend.plan_for_host(read_plan_file(path), path, H100, "10.8.0", rebuild=rebuild)
    assert plan == b"rebuilt-for-h100"
    assert seen[0].onnx == b"onnx-model-bytes"


def test_plan_without_onnx_cannot_be_rebuilt(tmp_path: Path) -> None:
    path = plan_file(tmp_path, onnx=None)
    with pytest.raises(EngineLoadError, match="carries no ONNX model"):
        trt_backend.plan_for_host(
            read_plan_file(path), path, H100, "10.8.0", rebuild=lambda pf: b""
        )


def test_matching_plan_is_used_as_is(tmp_path: Path) -> None:
    path = plan_file(tmp_path)
    assert trt_backend.plan_for_host(read_plan_file(path), path, A100, "10.8.0", rebuild=None) == (
        b"serialized-plan" * 100
    )


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"precision": "fp8"}, "pass one of fp32, fp16, bf16, int8"),
        ({"max_batch": 8, "opt_batch": 16}, "opt_batch=16, max_batch=8"),
        ({"min_batch": 0}, "raise max_batch"),
    ],
)
def test_a_build_config_out_of_range_says_what_works(settings: dict[str, Any], says: str) -> None:
    with pytest.raises(EngineConfigError) as err:
        trt_backend.BuildConfig(**settings)
    assert err.value.code == "invalid_argument"
    assert says in err.value.message


def test_only_the_batch_axis_may_be_dynamic() -> None:
    sig = Signature((TensorSpec("x", "float32", (-1, -1)),), (TensorSpec("y", "float32", (-1, 3)),))
    with pytest.raises(BackendBuildError, match="dynamic batch axis only"):
        batched_shape(sig, "x", 8)
    assert batched_shape(SIG, "x", 8) == (8, 4)


def _tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return True
    return False


@pytest.mark.skipif(not _tensorrt_missing(), reason="TensorRT is installed here")
def test_without_tensorrt_load_says_how_to_get_it(tmp_path: Path) -> None:
    status = trt_backend.status()
    assert not status.usable
    assert status.how_to_get is not None
    assert "kiln[tensorrt]" in status.how_to_get
    with pytest.raises(BackendUnavailable) as err:
        load(plan_file(tmp_path), "tensorrt")
    assert err.value.code == "unavailable"


def test_damage_is_reported_before_tensorrt_is_needed(tmp_path: Path) -> None:
    path = plan_file(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EngineLoadError) as err:
        load(path, "tensorrt")
    assert err.value.code == "data_loss"


# -- real TensorRT: only where it and a GPU exist --------------------------------------------------


def _skip_without_tensorrt() -> None:
    if _tensorrt_missing():
        pytest.skip("TensorRT is not installed (pip install 'kiln[tensorrt]' on a GPU machine)")
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed")
    if not cuda_gpus():
        pytest.skip("no NVIDIA GPU on this host")


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_run_a_real_plan(tmp_path: Path, precision: str) -> None:
    _skip_without_tensorrt()
    onnx_path = linear_model(tmp_path / "m.onnx")
    dest = tmp_path / "m.plan"
    trt_backend.build_plan_file(
        onnx_path,
        dest,
        Signature(SIG.inputs, SIG.outputs),
        trt_backend.BuildConfig(precision=precision, max_batch=32),
        cache_dir=tmp_path / "cache",
    )
    assert list((tmp_path / "cache" / "tensorrt").glob("timing-*.cache"))
    with load(dest, "tensorrt", EngineOptions(device="cuda")) as engine:
        x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
        tol = 1e-4 if precision == "fp32" else 2e-2
        np.testing.assert_allclose(engine.infer({"x": x})["y"], expected(x), atol=tol, rtol=tol)
