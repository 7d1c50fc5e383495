"""`kiln models show` by task: a regressor's versions show RMSE, MAE and R^2, a registered
version says where it came from and what it takes; classifiers' tables are as before."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import save_file

import kiln.registry
from kiln.data import load_dataset
from kiln.registry import Lineage
from kiln.settings import Settings
from kiln.sources import RegisterOptions, SourceSpec, parse_inputs, register_source
from tests.integration.regressors import write_regressor
from tests.unit import sources_models


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables one row per line, so that the tests can read their cells."""
    monkeypatch.setenv("COLUMNS", "400")


def _lines(text: str) -> list[str]:
    return [
        " ".join(line.replace("│", " ").replace("┃", " ").split()) for line in text.splitlines()
    ]


def test_a_regressor_shows_rmse_mae_and_r2(cli: Any, tmp_path: Path, settings: Settings) -> None:
    data = load_dataset("diabetes", settings)
    weights, *_ = np.linalg.lstsq(data.train.x, data.train.y - data.train.y.mean(), rcond=None)
    path = write_regressor(tmp_path / "sugar.onnx", weights, float(data.train.y.mean()))
    done = cli("register", "sugar", "--onnx", str(path), "--task", "regression",
               "--dataset", "diabetes", "--json")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    metrics = cli("models", "show", "sugar:1", "--json").json()["metrics"]

    shown = cli("models", "show", "sugar")
    assert shown.exit_code == 0, shown.stderr
    header = next(line for line in _lines(shown.stdout) if line.startswith("version"))
    assert header.split()[:5] == ["version", "created", "(UTC)", "rmse", "mae"]
    assert "r2" in header and "accuracy" not in header and "loss" not in header
    row = next(line for line in _lines(shown.stdout) if line.startswith("1 "))
    for key in ("test_rmse", "test_mae", "test_r2"):
        assert f"{metrics[key]:.4f}" in row
    assert row.endswith("checkpoint - onnx sugar.onnx")  # artifacts, aliases, where it came from
    assert metrics["test_r2"] > 0.3  # least squares on diabetes: about 0.5
    # The drift reference is one line in the detail view (hundreds of numbers under --json).
    detail = cli("models", "show", "sugar:1")
    assert detail.exit_code == 0, detail.stderr
    text = " ".join(_lines(detail.stdout))
    assert "config reference 10 input features (1 categorical)" in text
    assert "full profile: --json" in text and "quantiles" not in text


def test_a_registered_version_shows_its_source_and_signature(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    weights = tmp_path / "two_tower.safetensors"
    save_file(sources_models.two_tower().state_dict(), str(weights))
    spec = SourceSpec(
        "module",
        weights,
        builder="tests.unit.sources_models:two_tower",
        model_args={"dim": 3},
        inputs=parse_inputs(["features:FP32:-1,10", "ids:INT64:-1,4"]),
        output_names=("score", "pooled"),
    )
    with kiln.registry.open(settings=settings) as registry:
        register_source(registry, "tower", spec, RegisterOptions(task="regression"))
    detail = cli("models", "show", "tower:1")
    assert detail.exit_code == 0, detail.stderr
    lines = _lines(detail.stdout)
    source = next(line for line in lines if line.startswith("source "))
    assert source.startswith("source module two_tower.safetensors (sha256 ")
    assert "builder tests.unit.sources_models:two_tower(dim=3)" in source
    assert "task regression" in lines
    assert "inputs features: float32[N,10]; ids: int64[N,4]" in lines
    assert any(line.startswith("outputs score: float32[N,") for line in lines)
    assert not any(line.startswith(("config source", "config signature")) for line in lines)
    # The JSON keeps the raw config.
    config = cli("models", "show", "tower:1", "--json").json()["config"]
    assert config["source"]["kind"] == "module" and config["signature"]["inputs"]


def test_classifiers_and_regressors_side_by_side(cli: Any, settings: Settings) -> None:
    """A model holding both kinds shows both column sets, '-' where a metric is not the
    version's own; a classifier-only model keeps the columns it always had."""
    home = settings.home
    with kiln.registry.open(settings=settings) as registry:
        for name, config, metrics in (
            ("mixed", {"arch": "mlp"}, {"test_accuracy": 0.91, "test_loss": 0.3, "ece": 0.02}),
            ("mixed", {"task": "regression", "class_names": []},
             {"test_rmse": 54.25, "test_mae": 43.5, "test_r2": 0.47, "test_loss": 0.55}),
            ("plain", {"arch": "mlp"}, {"test_accuracy": 0.91, "test_loss": 0.3, "ece": 0.02}),
        ):  # fmt: skip
            ckpt = home / f"{name}.safetensors"
            ckpt.write_bytes(os.urandom(64))
            registry.register_version(
                name, checkpoint=ckpt, config=config, metrics=metrics, lineage=Lineage()
            )
    mixed = _lines(cli("models", "show", "mixed").stdout)
    header = next(line for line in mixed if line.startswith("version"))
    assert header.split()[3:9] == ["accuracy", "loss", "ece", "rmse", "mae", "r2"]
    first = next(line for line in mixed if line.startswith("1 ")).split()
    second = next(line for line in mixed if line.startswith("2 ")).split()
    assert first[3:9] == ["0.9100", "0.3000", "0.0200", "-", "-", "-"]
    assert second[3:9] == ["-", "-", "-", "54.2500", "43.5000", "0.4700"]
    plain = _lines(cli("models", "show", "plain").stdout)
    header = next(line for line in plain if line.startswith("version"))
    assert header.split()[3:6] == ["accuracy", "loss", "ece"] and "rmse" not in header
    detail = _lines(cli("models", "show", "plain:1").stdout)
    assert not any(line.startswith(("source ", "inputs ", "task ")) for line in detail)
