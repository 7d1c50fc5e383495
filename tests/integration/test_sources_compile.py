"""Models made with plain PyTorch outside Kiln's trainer, registered with `kiln register` and
compiled with `kiln compile`: each engine judged against the source itself (issue #15)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from safetensors.torch import save_file

import kiln.registry
from kiln.data import load_dataset
from kiln.settings import Settings
from kiln.sources.onnx_model import EVALUATOR
from kiln_engines import load
from tests.unit import sources_models

FAST = ("--parity-samples", "64")


def _artifact(settings: Settings, name: str, kind: str) -> Any:
    with kiln.registry.open(settings=settings) as registry:
        artifact = registry.artifacts(name, 1, kind)[0]
        return artifact, registry.artifact_file(artifact)


def test_an_exported_program_compiles_to_onnxruntime_and_aotinductor(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    model = sources_models.SequenceClassifier().eval()
    torch.manual_seed(0)
    batch, length = torch.export.Dim("batch", max=32), torch.export.Dim("length", max=64)
    program = torch.export.export(
        model, (torch.zeros(2, 5, dtype=torch.long),), dynamic_shapes=({0: batch, 1: length},)
    )
    path = tmp_path / "program.pt2"
    torch.export.save(program, path)

    registered = cli(
        "register", "seq", "--exported", str(path), "--input", "tokens:INT64:-1,-1",
        "--classes", "neg,neu,pos", "--json",
    )  # fmt: skip
    assert registered.exit_code == 0, registered.stderr
    config = registered.json()["config"]
    assert config["signature"]["inputs"] == [
        {"name": "tokens", "dtype": "int64", "shape": [-1, -1]}
    ]
    assert config["signature"]["max_batch"] == 32  # the program's own batch bound

    result = cli("compile", "seq:1", "-t", "onnxruntime", "-t", "aotinductor", *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["max_batch"] == 32
    assert report["reference"] == "pytorch eager (fp32)"
    assert {r["kind"] for r in report["results"]} == {"onnx", "onnxruntime", "aotinductor"}
    for r in report["results"]:
        assert r["status"] == "passed", r
        assert r["parity"]["held_out"][0]["top1_agreement"] == 1.0
    assert any("registered without --dataset" in note for note in report["notes"])

    # The sequence axis stayed dynamic: every engine answers at two lengths like the program.
    for kind in ("onnxruntime", "aotinductor"):
        _, file = _artifact(settings, "seq", kind)
        with load(file, kind) as engine:
            for n, t in ((1, 3), (5, 11)):
                tokens = np.random.default_rng(t).integers(0, 30, (n, t), dtype=np.int64)
                expected = model(torch.from_numpy(tokens)).detach().numpy()
                got = engine.infer({"tokens": tokens})["logits"]
                np.testing.assert_allclose(got, expected, atol=1e-5)


def _onnx_regressor(path: Path) -> torch.nn.Module:
    model = sources_models.regressor().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(2, 10),), str(path), input_names=["features"],
            output_names=["prediction"], dynamo=True, external_data=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )  # fmt: skip
    return model


def test_an_onnx_regressor_compiles_against_the_reference_evaluator(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    model = _onnx_regressor(tmp_path / "regressor.onnx")
    registered = cli(
        "register", "diabetes", "--onnx", str(tmp_path / "regressor.onnx"),
        "--task", "regression", "--dataset", "diabetes", "--json",
    )  # fmt: skip
    assert registered.exit_code == 0, registered.stderr
    version = registered.json()
    assert version["config"]["dataset"] == "diabetes"
    assert version["config"]["reference"]["predictions"]["task"] == "regression"
    assert version["metrics"]["test_rmse"] > 0

    test = load_dataset("diabetes", settings).test
    result = cli("compile", "diabetes:1", "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["task"] == "regression" and report["reference"] == EVALUATOR
    assert [r["kind"] for r in report["results"]] == ["onnx", "onnxruntime"]
    for r in report["results"]:
        assert r["status"] == "passed", r
        held = r["parity"]["held_out"][0]
        assert held["top1_agreement"] is None  # a regressor's outputs are values
        assert held["samples"] == len(test.y)  # the diabetes test split, not random inputs
        assert held["relative_error"] < 1e-5
    assert report["notes"] == []

    # The onnx artifact is the registered file, graph untouched, with Kiln's signature added.
    _, file = _artifact(settings, "diabetes", "onnx")
    stored, source = onnx.load(str(file)), onnx.load(str(tmp_path / "regressor.onnx"))
    assert stored.graph == source.graph
    with load(file, "onnxruntime") as engine:
        x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
        expected = model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(engine.infer({"features": x})["prediction"], expected, atol=1e-5)


def test_an_onnx_source_says_what_it_cannot_build(cli: Any, tmp_path: Path) -> None:
    _onnx_regressor(tmp_path / "regressor.onnx")
    registered = cli(
        "register", "r", "--onnx", str(tmp_path / "regressor.onnx"), "--task", "regression"
    )
    assert registered.exit_code == 0, registered.stderr
    aoti = cli("compile", "r:1", "-t", "aotinductor", *FAST)
    assert aoti.exit_code == 2
    assert "unavailable for an ONNX source" in " ".join(aoti.stderr.split())
    int8 = cli("compile", "r:1", "--precision", "int8", *FAST)
    assert int8.exit_code == 2
    assert "registered with --dataset" in " ".join(int8.stderr.split())


def test_a_two_input_two_output_module_compiles(cli: Any, tmp_path: Path) -> None:
    weights = tmp_path / "two_tower.safetensors"
    save_file(sources_models.two_tower().state_dict(), str(weights))
    registered = cli(
        "register", "tower", "--module", "tests.unit.sources_models:two_tower",
        "--weights", str(weights), "--input", "features:FP32:-1,10", "--input", "ids:INT64:-1,4",
        "--task", "regression", "--output", "score", "--output", "pooled",
    )  # fmt: skip
    assert registered.exit_code == 0, registered.stderr
    result = cli("compile", "tower:1", *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    for r in result.json()["results"]:
        assert r["status"] == "passed", r
        outputs = {p["output"]: p for p in r["parity"]["held_out"]}
        assert set(outputs) == {"score", "pooled"}
        assert all(p["top1_agreement"] is None for p in outputs.values())


def test_input_ranges_keep_random_ids_inside_a_small_vocabulary(cli: Any, tmp_path: Path) -> None:
    """Without a data set, parity's integer inputs are 0..9: an embedding of 5 rows cannot take
    them. `--input-range ids=0:4` at registration is what compile draws from instead."""
    weights = tmp_path / "small_vocab.safetensors"
    save_file(sources_models.two_tower(vocab=5).state_dict(), str(weights))
    common = (
        "--module", "tests.unit.sources_models:two_tower", "--model-arg", "vocab=5",
        "--weights", str(weights), "--input", "features:FP32:-1,10", "--input", "ids:INT64:-1,4",
        "--task", "regression",
    )  # fmt: skip
    assert cli("register", "small", *common, "--input-range", "ids=0:4").exit_code == 0
    bad = cli("register", "small", *common, "--input-range", "tokens=0:4")
    assert bad.exit_code == 2 and "no input 'tokens'" in bad.stderr
    bad = cli("register", "small", *common, "--input-range", "ids=0:x")
    assert bad.exit_code == 2 and "NAME=LOW:HIGH" in bad.stderr
    result = cli("compile", "small:1", *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    assert all(r["status"] == "passed" for r in result.json()["results"])
    assert cli("register", "wide", *common).exit_code == 0
    unranged = cli("compile", "wide:1", *FAST)
    assert unranged.exit_code == 2, unranged.stderr
    message = " ".join(unranged.stderr.split())
    assert "the model itself fails on the inputs parity compares engines on" in message
    assert "--input-range ids=LOW:HIGH" in message


def test_reduced_precision_keeps_integer_inputs() -> None:
    from kiln.compile.targets import _Cast

    cast = _Cast(sources_models.two_tower(), torch.bfloat16)
    score, pooled = cast(torch.zeros(2, 10), torch.ones(2, 4, dtype=torch.long))
    assert score.dtype == pooled.dtype == torch.float32
