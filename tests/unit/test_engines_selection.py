"""Choice at load: tensorrt > aotinductor on CUDA > onnxruntime, overridable, never silent."""

from __future__ import annotations

import pytest

from kiln_engines import BackendStatus, BackendUnavailable, Candidate, choose, rank

CPU_HOST = {
    "onnxruntime": BackendStatus("onnxruntime", True, "cpu", devices=("cpu",)),
    "aotinductor": BackendStatus("aotinductor", True, "cpu", devices=("cpu",)),
    "tensorrt": BackendStatus("tensorrt", False, "not installed", "pip install 'kiln[tensorrt]'"),
}
GPU_HOST = {
    "onnxruntime": BackendStatus("onnxruntime", True, "cpu", devices=("cpu",)),
    "aotinductor": BackendStatus("aotinductor", True, "cuda", devices=("cpu", "cuda")),
    "tensorrt": BackendStatus("tensorrt", True, "H100", devices=("cuda",)),
}
ALL = [
    Candidate("onnxruntime"),
    Candidate("aotinductor", "cpu"),
    Candidate("aotinductor", "cuda"),
    Candidate("tensorrt", "cuda"),
]


def on(host: dict[str, BackendStatus]):  # type: ignore[no-untyped-def]
    return lambda name: host[name]


def test_gpu_host_prefers_tensorrt_then_aotinductor_cuda() -> None:
    order = [(s.candidate.kind, s.device) for s in rank(ALL, status_of=on(GPU_HOST))]
    assert order == [
        ("tensorrt", "cuda"),
        ("aotinductor", "cuda"),
        ("onnxruntime", "cpu"),
        ("aotinductor", "cpu"),
    ]


def test_cpu_host_prefers_onnxruntime() -> None:
    chosen = choose(ALL, status_of=on(CPU_HOST))
    assert (chosen.candidate.kind, chosen.device) == ("onnxruntime", "cpu")


def test_override_is_honoured() -> None:
    chosen = choose(ALL, override="aotinductor:cpu", status_of=on(GPU_HOST))
    assert chosen.candidate == Candidate("aotinductor", "cpu")


def test_override_is_refused_not_replaced() -> None:
    with pytest.raises(BackendUnavailable) as err:
        choose(ALL, override="tensorrt", status_of=on(CPU_HOST))
    assert "tensorrt: not installed (pip install 'kiln[tensorrt]')" in err.value.message


def test_nothing_runnable_says_why() -> None:
    with pytest.raises(BackendUnavailable) as err:
        choose([Candidate("tensorrt", "cuda")], status_of=on(CPU_HOST))
    assert err.value.code == "unavailable"
    assert "tensorrt/cuda" in err.value.message


def test_unknown_override_kind() -> None:
    with pytest.raises(Exception, match="unknown artifact kind"):
        choose(ALL, override="tflite", status_of=on(CPU_HOST))


def test_real_host_status_runs_onnxruntime_on_cpu() -> None:
    # This host (CI, no GPU) always has onnxruntime.
    assert choose([Candidate("onnxruntime")]).device in ("cpu", "cuda")
