"""`kiln register` through the real entry point: what a good source records, and the exit-2
message for every kind of bad source (issue #15). Models are plain PyTorch
(`tests.unit.sources_models`) or ONNX built with onnx.helper."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

import kiln.registry
from kiln.errors import InvalidArgument
from kiln.settings import Settings
from kiln.sources import parse_input
from tests.unit import sources_models

TWO_TOWER = "tests.unit.sources_models:two_tower"
INPUTS = ("--input", "features:FP32:-1,10", "--input", "ids:INT64:-1,4")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "two_tower.safetensors"
    save_file(sources_models.two_tower().state_dict(), str(path))
    return path


def _refused(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert "internal error" not in message
    for fragment in fragments:
        assert fragment in message, message


def _onnx_with(path: Path, node: onnx.NodeProto) -> Path:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path.write_bytes(model.SerializeToString())
    return path


def test_a_module_source_records_signature_task_and_lineage(
    cli: Any, weights: Path, settings: Settings
) -> None:
    result = cli(
        "register", "scorer", "--module", TWO_TOWER, "--weights", str(weights), *INPUTS,
        "--model-arg", "dim=3", "--task", "regression", "--output", "score",
        "--output", "pooled", "--actor", "ci", "--max-batch", "16", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = result.json()["config"]
    assert config["task"] == "regression" and config["class_names"] == []
    assert config["signature"] == {
        "inputs": [
            {"name": "features", "dtype": "float32", "shape": [-1, 10]},
            {"name": "ids", "dtype": "int64", "shape": [-1, 4]},
        ],
        "outputs": [
            {"name": "score", "dtype": "float32", "shape": [-1, 1]},
            {"name": "pooled", "dtype": "float32", "shape": [-1, 3]},
        ],
        "max_batch": 16,
    }
    source = config["source"]
    assert source["kind"] == "module" and source["builder"] == TWO_TOWER
    assert source["model_args"] == {"dim": 3} and source["registered_by"] == "ci"
    assert source["filename"] == weights.name
    with kiln.registry.open(settings=settings) as registry:
        blob = registry.checkpoint("scorer", 1)
        assert blob.sha256 == source["sha256"]
        assert registry.artifact_file(blob).read_bytes() == weights.read_bytes()


def test_a_classifier_gets_class_names_from_its_width(cli: Any, tmp_path: Path) -> None:
    path = _onnx_with(tmp_path / "relu.onnx", helper.make_node("Relu", ["x"], ["y"]))
    result = cli("register", "relu", "--onnx", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    config = result.json()["config"]
    assert config["task"] == "classification"
    assert config["class_names"] == ["0", "1", "2"]
    assert config["source"]["kind"] == "onnx" and "builder" not in config["source"]


def test_a_classifier_with_a_dataset_gets_the_profile_and_test_accuracy(
    cli: Any, tmp_path: Path
) -> None:
    # A linear model over the 8x8 UCI digits, saved as a plain PyTorch module's weights.
    torch.manual_seed(0)
    weights = tmp_path / "digits.safetensors"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    save_file(model.state_dict(), str(weights))
    builder = tmp_path / "digits_model.py"
    builder.write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        result = cli(
            "register", "digits", "--module", "digits_model:build", "--weights", str(weights),
            "--input", "image:FP32:-1,1,8,8", "--dataset", "digits", "--json",
        )  # fmt: skip
    finally:
        sys.path.remove(str(tmp_path))
    assert result.exit_code == 0, result.stderr
    version = result.json()
    config = version["config"]
    assert config["dataset"] == "digits" and config["input_name"] == "image"
    assert config["class_names"] == [str(i) for i in range(10)]
    assert config["reference"]["predictions"]["samples"] > 0
    assert 0.0 <= version["metrics"]["test_accuracy"] <= 1.0
    assert version["lineage"]["data_fingerprint"] == config["data_fingerprint"]


def test_width_one_without_a_task_asks_for_it(cli: Any, tmp_path: Path) -> None:
    weights = tmp_path / "r.safetensors"
    save_file(sources_models.regressor().state_dict(), str(weights))
    result = cli(
        "register", "r", "--module", "tests.unit.sources_models:regressor",
        "--weights", str(weights), "--input", "x:FP32:-1,10",
    )  # fmt: skip
    _refused(result, "one value per row", "--task regression")


def test_not_onnx(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf message at all")
    _refused(cli("register", "m", "--onnx", str(path)), f"--onnx {path} is not an ONNX model")


def test_onnx_failing_the_checker_quotes_it(cli: Any, tmp_path: Path) -> None:
    path = _onnx_with(tmp_path / "bad.onnx", helper.make_node("NoSuchOp", ["x"], ["y"]))
    _refused(
        cli("register", "m", "--onnx", str(path)),
        "fails the ONNX checker",
        "No Op registered for NoSuchOp",
    )


def test_builder_that_cannot_be_imported(cli: Any, weights: Path) -> None:
    result = cli(
        "register", "m", "--module", "no_such_package.models:build",
        "--weights", str(weights), *INPUTS,
    )  # fmt: skip
    _refused(result, "cannot import module 'no_such_package.models'")


def test_builder_that_returns_no_module(cli: Any, weights: Path) -> None:
    result = cli(
        "register", "m", "--module", "tests.unit.sources_models:not_a_module",
        "--weights", str(weights), *INPUTS,
    )  # fmt: skip
    _refused(result, "returned str, not a torch.nn.Module")


def test_weights_that_do_not_fit_list_the_mismatches(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    state = sources_models.two_tower(dim=5).state_dict()
    state["extra.bias"] = torch.zeros(2)
    del state["dense.bias"]
    save_file(state, str(path))
    result = cli("register", "m", "--module", TWO_TOWER, "--weights", str(path), *INPUTS)
    _refused(
        result,
        "do not fit the module",
        "missing from the file: dense.bias",
        "not in the module: extra.bias",
        "shape differs: embedding.weight [20, 5] (module: [20, 3])",
    )


def test_a_signature_the_module_cannot_run_shows_torchs_error(cli: Any, weights: Path) -> None:
    result = cli(
        "register", "m", "--module", TWO_TOWER, "--weights", str(weights),
        "--input", "features:FP32:-1,7", "--input", "ids:INT64:-1,4", "--task", "regression",
    )  # fmt: skip
    _refused(result, "cannot run on the declared inputs", "mat1 and mat2 shapes cannot be")


@pytest.mark.parametrize("option", ["--weights", "--onnx", "--exported"])
def test_torch_save_files_are_refused_before_loading(
    cli: Any, tmp_path: Path, weights: Path, option: str
) -> None:
    path = tmp_path / "model.pt"
    torch.save(sources_models.two_tower().state_dict(), path)  # a zip holding data.pkl
    args = ["--module", TWO_TOWER, "--weights", str(path), *INPUTS]
    if option != "--weights":
        args = [option, str(path)]
    _refused(cli("register", "m", *args), "pickle-based file", "Kiln loads no pickle")


def test_a_bare_pickle_is_refused(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    _refused(cli("register", "m", "--onnx", str(path)), "pickle-based file (pickle)")


def test_exactly_one_source(cli: Any, tmp_path: Path, weights: Path) -> None:
    _refused(cli("register", "m"), "give exactly one source")
    _refused(
        cli("register", "m", "--onnx", str(weights), "--exported", str(weights)),
        "(got --onnx, --exported)",
    )


def test_nothing_is_registered_when_a_source_is_refused(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00" * 16)
    assert cli("register", "m", "--onnx", str(path)).exit_code == 2
    with kiln.registry.open(settings=settings) as registry:
        assert registry.list_models() == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("features:FP32", "is not NAME:DATATYPE:SHAPE"),
        ("features:FLOAT:-1,10", "unknown datatype 'FLOAT'"),
        ("features:FP32:-1,ten", "must be comma-separated integers"),
        ("features:FP32:-1,0", "positive sizes or -1"),
    ],
)
def test_bad_input_declarations(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        parse_input(text)


def test_input_declarations_take_kserve_datatypes() -> None:
    spec = parse_input("ids:int64:-1,-1")
    assert (spec.name, spec.dtype, spec.shape) == ("ids", "int64", (-1, -1))


def test_an_onnx_file_with_external_data_is_stored_as_one_file(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    path = _onnx_with(tmp_path / "relu.onnx", helper.make_node("Add", ["x", "w"], ["y"]))
    model = onnx.load(str(path))
    weight = onnx.numpy_helper.from_array(np.ones((1, 3), np.float32), "w")
    model.graph.initializer.append(weight)
    onnx.save(model, str(path), save_as_external_data=True, size_threshold=0, location="w.bin")
    assert (tmp_path / "w.bin").is_file()
    result = cli("register", "ext", "--onnx", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    with kiln.registry.open(settings=settings) as registry:
        stored = onnx.load(str(registry.artifact_file(registry.checkpoint("ext", 1))))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    assert onnx.numpy_helper.to_array(stored.graph.initializer[0]).tolist() == [[1.0, 1.0, 1.0]]
