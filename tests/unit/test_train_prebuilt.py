"""kiln.train on a module built outside Kiln (`train(..., model=...)`, what retraining a
`kiln register --module` version runs): the user's module is trained in place, unwrapped, from
its own weights; a regressor's raw-unit outputs are what its metrics measure, and its buffers
(the user's scaling constants) are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kiln.data import load_dataset
from kiln.settings import Settings
from kiln.train import TrainConfig, predict_logits, train
from tests.unit import sources_models


def test_a_users_regressor_trains_in_raw_units(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "kiln-home")
    data = load_dataset("diabetes", settings)
    model = sources_models.tabular_regressor()
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    with torch.no_grad():
        model.mean.copy_(x.mean(0))
        model.std.copy_(x.std(0))
        model.target_mean.copy_(y.mean())
        model.target_std.copy_(y.std())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig.for_task(
        "regression", dataset="diabetes", model="tests.unit.sources_models:tabular_regressor",
        model_args={}, epochs=15, patience=15,
    )  # fmt: skip
    result = train(config, settings, show_progress=False, model=model)

    assert type(model) is sources_models.TabularRegressor  # trained as given, not wrapped
    after = model.state_dict()
    for name in ("mean", "std", "target_mean", "target_std"):
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["net.0.weight"], before["net.0.weight"])
    # The module holds the best epoch; the metrics are its raw-unit errors.
    val = predict_logits(model, data.val.x)[:, 0].astype(np.float64)
    val_rmse = float(np.sqrt(np.mean((val - data.val.y) ** 2)))
    assert np.isclose(result.metrics["best_val_rmse"], val_rmse, rtol=1e-5)
    test = predict_logits(model, data.test.x)[:, 0].astype(np.float64)
    test_rmse = float(np.sqrt(np.mean((test - data.test.y) ** 2)))
    assert np.isclose(result.metrics["test_rmse"], test_rmse, rtol=1e-5)
    assert test_rmse < float(np.std(data.test.y))  # better than predicting the mean


def test_a_users_classifier_trains_on_its_scores(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "kiln-home")
    data = load_dataset("digits", settings)
    model = sources_models.digits_classifier()
    config = TrainConfig(
        dataset="digits", model="tests.unit.sources_models:digits_classifier", epochs=3
    )
    result = train(config, settings, show_progress=False, model=model)

    assert isinstance(model, torch.nn.Sequential)
    predicted = predict_logits(model, data.test.x).argmax(1)
    assert result.metrics["test_accuracy"] == float(np.mean(predicted == data.test.y))
    assert result.metrics["test_accuracy"] > 0.8
