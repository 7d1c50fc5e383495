"""`kiln compile` and `kiln engines` through the real CLI, on a trained, registered model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import kiln.registry
from kiln.settings import Settings
from kiln_engines import Candidate, choose, load


@pytest.fixture
def registered(cli: Any) -> str:
    trained = cli(
        "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--name", "digits",
        "--no-progress", "--json",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    return "digits:1"


def test_compile_registers_verified_artifacts(cli: Any, registered: str) -> None:
    result = cli("compile", registered, "--target", "onnxruntime", "--max-batch", "16", "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["ref"] == "digits:1"
    assert [r["kind"] for r in report["results"]] == ["onnx", "onnxruntime"]
    for r in report["results"]:
        assert r["status"] == "passed"
        assert r["artifact"] is not None
        assert r["parity"]["held_out"][0]["top1_agreement"] == 1.0
        assert r["parity"]["held_out"][0]["samples"] > 100  # the real test split
        assert r["speedup"]["latency_batch1"] > 0
    assert "verifying onnxruntime" in result.stderr  # progress goes to stderr

    registry = kiln.registry.open(settings=Settings())
    artifacts = {a.kind.value: a for a in registry.artifacts("digits", 1)}
    ort = artifacts["onnxruntime"]
    assert ort.target["device"] == "cpu"
    assert ort.libraries["onnxruntime"]
    assert ort.report["parity"]["passed"] is True
    assert ort.report["performance"]["latency_ms_p50"] > 0
    assert ort.report["measured_on"]["cpu_count"] >= 1

    # What serving does: choose for this host, load the verified file, run a request.
    candidates = {
        Candidate(a.kind.value, a.target["device"]): a
        for a in artifacts.values()
        if a.kind.value != "checkpoint"
    }
    chosen = choose(candidates)
    assert chosen.candidate.kind in ("onnxruntime", "onnx")
    artifact = candidates[chosen.candidate]
    with load(registry.artifact_file(artifact), artifact.kind.value) as engine:
        out = engine.infer({"input": np.zeros((2, 1, 8, 8), np.float32)})
        assert out["logits"].shape == (2, 10)


def test_human_report_and_unavailable_target(cli: Any, registered: str) -> None:
    result = cli("compile", registered, "--target", "onnxruntime", "--target", "tensorrt")
    try:
        import tensorrt  # noqa: F401
    except Exception:
        assert result.exit_code == 2
        assert "tensorrt: not installed" in result.stderr
        assert "kiln[tensorrt]" in result.stdout
    assert "parity with the checkpoint" in result.stdout
    assert "vs eager" in result.stdout


def test_unknown_reference_and_target(cli: Any, registered: str) -> None:
    missing = cli("compile", "digits:9")
    assert missing.exit_code == 2
    assert "model 'digits' has no version 9; versions: 1" in missing.stderr
    bad = cli("compile", registered, "--target", "tflite")
    assert bad.exit_code == 2
    assert "'tflite' is not one of 'onnxruntime'" in " ".join(bad.stderr.split())


def test_engines_lists_backends(cli: Any) -> None:
    result = cli("engines", "--json")
    assert result.exit_code == 0
    backends = {b["name"]: b for b in result.json()["backends"]}
    assert backends["onnxruntime"]["usable"] is True
    assert set(backends) == {"onnxruntime", "aotinductor", "tensorrt"}
    if not backends["tensorrt"]["usable"]:
        assert backends["tensorrt"]["how_to_get"]
    human = cli("engines")
    assert "inference backends on this host" in human.stdout
