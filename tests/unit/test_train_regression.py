"""kiln.train for regression: a short run on diabetes learns, the checkpoint rebuilds a
regressor in raw units, metrics and curves are recorded, and `kiln train` drives it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import mean_absolute_error, r2_score

from kiln.data import Split
from kiln.errors import InvalidArgument
from kiln.settings import Settings
from kiln.train import (
    REGRESSION_DEFAULTS,
    Regressor,
    TrainConfig,
    TrainResult,
    build_regressor,
    load_checkpoint,
    predict_logits,
    regression_report,
    train,
)

# Few epochs and a narrow net: enough to beat predicting the mean on diabetes, cheap on 2 cores.
SHORT = {"epochs": 40, "patience": 40, "model_args": {"hidden": [16], "dropout": 0.0}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    home = tmp_path_factory.mktemp("kiln-home")
    config = TrainConfig.for_task("regression", dataset="diabetes", **SHORT)
    return train(config, Settings(home=home), show_progress=False)


def test_a_short_run_on_diabetes_learns(trained: TrainResult) -> None:
    metrics = trained.metrics
    assert metrics["test_r2"] > 0.3  # a linear model reaches ~0.45 on this split
    assert {"test_mae", "test_rmse", "test_loss", "test_samples"} <= set(metrics)
    assert metrics["test_samples"] == 44
    assert "test_accuracy" not in metrics and "confusion" not in metrics
    assert metrics["best_val_rmse"] == trained.history[metrics["best_epoch"] - 1]["val_rmse"]


def test_metrics_agree_with_scikit_learn(trained: TrainResult) -> None:
    predicted = predict_logits(load_checkpoint(trained.checkpoint).model, trained.dataset.test.x)
    truth = trained.dataset.test.y
    assert trained.metrics["test_r2"] == pytest.approx(r2_score(truth, predicted[:, 0]), abs=1e-5)
    assert trained.metrics["test_mae"] == pytest.approx(
        mean_absolute_error(truth, predicted[:, 0]), rel=1e-5
    )


def test_checkpoint_rebuilds_a_regressor_in_raw_units(trained: TrainResult) -> None:
    loaded = load_checkpoint(trained.checkpoint)
    config = loaded.config
    assert isinstance(loaded.model, Regressor)
    assert config.task == "regression" and config.output_width == 1
    assert config.output_name == "prediction" and config.class_names == []
    assert config.target_normalization is not None
    assert config.target_normalization["mean"] == pytest.approx(
        float(trained.dataset.train.y.astype(np.float64).mean())
    )
    assert config.train["task"] == "regression" and config.train["loss"] == "mse"
    x = torch.from_numpy(trained.dataset.test.x)
    with torch.no_grad():
        out = loaded.model(x)
        standardized = loaded.model.standardized(x)
    # The forward is the de-standardised network: what ONNX export and every engine compute.
    assert out.shape == (44, 1)
    torch.testing.assert_close(
        out, standardized * loaded.model.target_std + loaded.model.target_mean
    )
    assert 25.0 < float(out.mean()) < 346.0


def test_run_records_rmse_history_curves_and_a_regression_profile(trained: TrainResult) -> None:
    row = trained.history[0]
    assert {"train_loss", "train_rmse", "val_loss", "val_rmse"} <= set(row)
    assert (trained.run_dir / "curves.png").stat().st_size > 0
    lines = (trained.run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["val_rmse"] == row["val_rmse"]
    predictions = trained.config.reference["predictions"]
    assert predictions["task"] == "regression" and predictions["samples"] == 44
    assert predictions["rmse"] == pytest.approx(trained.metrics["test_rmse"], rel=1e-4)


def test_regression_report_definitions() -> None:
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    report = regression_report(truth + np.array([1.0, -1.0, 1.0, -1.0]), truth, "mse", 2.0)
    assert report["mae"] == 1.0 and report["rmse"] == 1.0
    assert report["r2"] == pytest.approx(1 - 4 / 5)
    assert report["loss"] == pytest.approx(0.25)  # errors of half a target std, squared
    huber = regression_report(truth + np.array([4.0, 0, 0, 0]), truth, "huber", 1.0)
    assert huber["loss"] == pytest.approx((4 - 0.5) / 4)  # linear beyond one std


def test_huber_loss_trains_and_warm_start_keeps_target_statistics(
    trained: TrainResult, settings: Settings
) -> None:
    config = TrainConfig.for_task(
        "regression", dataset="diabetes", loss="huber", **(SHORT | {"epochs": 3})
    )
    ds = trained.dataset
    shifted = dataclasses.replace(ds, train=Split(ds.train.x, ds.train.y + 100))
    warm = load_checkpoint(trained.checkpoint)
    result = train(config, settings, dataset=shifted, show_progress=False, warm_start=warm)
    assert result.config.train["loss"] == "huber"
    # The warm start's target statistics stay (as its input normalisation does).
    assert result.config.target_normalization == warm.config.target_normalization


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"dataset": "digits", "task": "regression"}, "does not fit data set 'digits'"),
        ({"dataset": "diabetes", "task": "classification"}, "which is a regression set"),
        ({"dataset": "diabetes", "loss": "cross-entropy"}, "takes mse or huber"),
        ({"dataset": "digits", "model": "mlp", "loss": "huber"}, "is for regressors"),
        ({"dataset": "diabetes", "loss": "l1"}, "--loss must be one of"),
    ],
)
def test_task_and_loss_must_fit_the_data_set(
    settings: Settings, given: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        train(TrainConfig.for_task("regression", **(given | {"epochs": 1})), settings)


def test_regression_defaults_are_a_narrow_mlp() -> None:
    config = TrainConfig.for_task("regression", dataset="autompg")
    assert config.model == "mlp" and config.model_args == REGRESSION_DEFAULTS["model_args"]
    assert TrainConfig.for_task("classification") == TrainConfig()
    assert TrainConfig.for_task("regression", epochs=5).epochs == 5


def test_builder_output_width_is_one() -> None:
    model = build_regressor(
        "mlp", (3,), target_normalization={"mean": 10.0, "std": 2.0}, hidden=[4]
    ).eval()
    with torch.no_grad():
        out = model(torch.zeros(5, 3))
        torch.testing.assert_close(out, model.standardized(torch.zeros(5, 3)) * 2.0 + 10.0)
    assert out.shape == (5, 1)


def test_parquet_regression_set_trains(tmp_path: Path, settings: Settings) -> None:
    x = np.linspace(-1.0, 1.0, 200)
    path = tmp_path / "line.parquet"
    pl.DataFrame({"x": x, "target": 3.0 * x + 1.0}).write_parquet(path)
    config = TrainConfig.for_task("regression", dataset=str(path), **(SHORT | {"lr": 1e-2}))
    result = train(config, settings, show_progress=False)
    assert result.config.task == "regression"
    assert result.metrics["test_r2"] > 0.9


def test_cli_train_regression_json_registers_and_compiles(cli: Any) -> None:
    args = ("--epochs", "5", "--model-arg", "hidden=[8]", "--no-progress")
    done = cli(
        "train", "--dataset", "diabetes", "--task", "regression", *args,
        "--name", "diab", "--compile", "onnxruntime", "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    payload = done.json()
    assert payload["task"] == "regression" and payload["model"] == "mlp"
    assert {"test_mae", "test_rmse", "test_r2", "test_loss"} <= set(payload["metrics"])
    assert payload["registered"]["reference"] == "diab:1"
    # The engine returns raw-unit predictions equal to the checkpoint's: parity passed.
    results = payload["compile"]["results"]
    assert results and all(r["status"] == "passed" and r["artifact"] for r in results)
    assert payload["compile"]["task"] == "regression"
    assert "prediction" in json.dumps(payload["compile"]["signature"])
    shown = cli("models", "show", "diab", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert "test_r2" in json.dumps(shown.json())
    inferred = cli("train", "--dataset", "autompg", *args)
    assert inferred.exit_code == 0, inferred.stderr
    assert "test R^2" in inferred.stdout and "per-class" not in inferred.stdout


def test_cli_train_refuses_a_task_the_data_set_does_not_have(cli: Any) -> None:
    done = cli("train", "--dataset", "digits", "--task", "regression", "--epochs", "1")
    assert done.exit_code == 2
    assert "does not fit data set 'digits'" in done.stderr
