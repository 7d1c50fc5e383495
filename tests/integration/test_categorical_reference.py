"""Both ways a version gets a reference profile record categorical features: `kiln register
--dataset autompg` (an ONNX regressor made outside Kiln) and `kiln train --dataset autompg`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.integration.regressors import write_regressor

CATEGORICAL = {"x[0]": [3, 4, 5, 6, 8], "x[5]": list(range(70, 83)), "x[6]": [1, 2, 3]}
"""autompg's cylinders, model year and origin."""


def categorical(config: dict[str, Any]) -> dict[str, list[int]]:
    features = config["reference"]["inputs"]["features"]
    return {name: f["categories"] for name, f in features.items() if "categories" in f}


def test_register_with_a_dataset_records_categories(cli: Any, tmp_path: Path) -> None:
    onnx_file = write_regressor(tmp_path / "mpg.onnx", np.full(7, 0.01), 20.0)
    result = cli(
        "register", "mpg", "--onnx", str(onnx_file), "--task", "regression",
        "--dataset", "autompg", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = result.json()["config"]
    assert categorical(config) == CATEGORICAL
    shares = config["reference"]["inputs"]["features"]["x[6]"]["shares"]
    assert abs(sum(shares) - 1.0) < 1e-5


def test_training_records_categories(cli: Any) -> None:
    result = cli("train", "--dataset", "autompg", "--epochs", "2", "--name", "mpg", "--json")
    assert result.exit_code == 0, result.stderr
    shown = cli("models", "show", "mpg:1", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert categorical(shown.json()["config"]) == CATEGORICAL
