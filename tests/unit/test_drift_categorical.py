"""Drift of categorical features on real autompg cars, logged as served traffic: held-out cars
are stable; more Japanese cars move origin (and the cylinder mix with it); a model year the
training data never had goes to "other"; the numbers by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.data.catalog import load_dataset
from kiln.data.profile import reference_profile
from kiln.evaluate import DriftThresholds, VersionInfo, evaluate_traffic, render_html
from kiln.evaluate.drift import CategoricalDrift, categorical_drift, input_drift
from kiln.settings import Settings
from kiln.traffic import TrafficLogger, TrafficRecord, TrafficSettings, Window

NOW = datetime.now(UTC).replace(microsecond=0)
CYLINDERS, MODEL_YEAR, ORIGIN = "x[0]", "x[5]", "x[6]"
JAPAN = 3


@pytest.fixture(scope="module")
def autompg() -> dict[str, Any]:
    ds = load_dataset("autompg", Settings())
    held_out = np.concatenate([ds.val.x, ds.test.x])
    profile = reference_profile(
        ds.train.x, ds.input_shape, ds.test.y[:, None], ds.test.y, task="regression"
    )
    return {
        "profile": profile,
        "held_out": held_out,
        "cars": np.concatenate([ds.train.x, held_out]),
    }


def evaluate(home: Path, cars: np.ndarray, profile: dict[str, Any], **t: Any) -> Any:
    """`cars` served one per request to a regressor with `profile`, then evaluated."""
    ts = int((NOW - timedelta(minutes=10)).timestamp() * 1e6)
    with TrafficLogger(home, TrafficSettings(flush_interval_s=60)) as logger:
        for i, car in enumerate(cars.astype(np.float32)):
            out = np.array([[20.0 + i % 7]], dtype=np.float32)
            logger.log(
                TrafficRecord(f"r{i}", ts + i, "autompg", 1, 10, input=car[None], output=out)
            )
    window = Window(NOW - timedelta(hours=1), NOW + timedelta(minutes=1))
    versions = {1: VersionInfo(1, [], profile, task="regression")}
    return evaluate_traffic(home, "autompg", window, versions, thresholds=DriftThresholds(**t))


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (drift,) = report["drift"]["versions"]
    return {f["name"]: f for f in drift["inputs"]["features"]}


def test_held_out_cars_are_stable(tmp_path: Path, autompg: dict[str, Any]) -> None:
    held_out = autompg["held_out"]  # 78 cars: judged with a lower sample floor
    report = evaluate(tmp_path, held_out, autompg["profile"], min_samples=50).to_dict()
    (drift,) = report["drift"]["versions"]
    assert drift["inputs"]["samples"] == len(held_out)
    assert drift["inputs"]["drifted"] == []
    features = by_name(report)
    for name in (CYLINDERS, MODEL_YEAR, ORIGIN):
        assert features[name]["kind"] == "categorical" and features[name]["moved_categories"] == []
        assert features[name]["total_variation"] < 0.2
    assert "kind" not in features["x[3]"]  # weight: numeric, reported as before
    assert set(features["x[3]"]) == {
        "name",
        "psi",
        "ks_statistic",
        "ks_pvalue",
        "reference_mean",
        "current_mean",
        "drift",
    }


def test_more_japanese_cars_move_origin_and_cylinders(
    tmp_path: Path, autompg: dict[str, Any]
) -> None:
    cars = autompg["cars"]
    weight = np.where(cars[:, 6] == JAPAN, 4.0, 1.0)
    shifted = cars[np.random.default_rng(0).choice(len(cars), 300, p=weight / weight.sum())]
    evaluation = evaluate(tmp_path, shifted, autompg["profile"])
    report = evaluation.to_dict()
    features = by_name(report)
    origin = features[ORIGIN]
    assert origin["drift"] and origin["psi"] > 0.2
    assert origin["moved_categories"][0] == "3"  # Japan gained most
    top = origin["categories"][0]
    assert top["name"] == "3" and top["current"] > top["reference"] + 0.15
    assert {"name": "other", "reference": 0.0, "current": 0.0}.items() <= next(
        c for c in origin["categories"] if c["name"] == "other"
    ).items()
    # Japanese cars of the period have four cylinders: the cylinder mix moves with them.
    assert features[CYLINDERS]["drift"] and "4" in features[CYLINDERS]["moved_categories"]
    assert {ORIGIN, CYLINDERS} <= set(report["drift"]["versions"][0]["inputs"]["drifted"])
    page = render_html(evaluation)
    assert "Categorical features, compared by category shares" in page
    assert f"{ORIGIN} (total variation" in page


def test_a_cylinder_mix_of_big_engines_is_named(autompg: dict[str, Any]) -> None:
    cars = autompg["cars"]
    big = cars[np.isin(cars[:, 0], [6, 8])]
    result = input_drift(big, autompg["profile"]["inputs"], DriftThresholds())
    (cylinders,) = [f for f in result.features if f.name == CYLINDERS]
    assert isinstance(cylinders, CategoricalDrift) and cylinders.drift
    assert set(cylinders.moved_categories) >= {"4", "8"}  # 4 lost, 8 gained
    assert cylinders.total_variation > 0.4


def test_an_unseen_model_year_is_other_and_drift(autompg: dict[str, Any]) -> None:
    cars = autompg["held_out"].copy()
    cars[::4, 5] = 83  # a quarter of the cars from a year the training data never had
    result = input_drift(cars, autompg["profile"]["inputs"], DriftThresholds(min_samples=50))
    (year,) = [f for f in result.features if f.name == MODEL_YEAR]
    assert isinstance(year, CategoricalDrift) and year.drift
    other = year.categories[0]
    assert (other.name, other.reference, other.moved) == ("other", 0.0, True)
    assert other.current == pytest.approx(20 / 78)


def test_category_psi_and_total_variation_by_hand() -> None:
    summary = {
        "edges": [1.0, 2.0],
        "fractions": [0.5, 0.25, 0.25],
        "quantiles": [1.0] * 51 + [2.0] * 25 + [3.0] * 25,
        "mean": 1.75,
        "std": 0.83,
        "kind": "categorical",
        "categories": [1, 2, 3],
        "shares": [0.5, 0.25, 0.25],
    }
    values = np.array([1.0] * 300 + [2.0] * 450 + [3.0] * 200 + [7.0] * 50)
    d = categorical_drift("c", values, summary, 1000, DriftThresholds())
    expected = (
        (0.3 - 0.5) * math.log(0.3 / 0.5)
        + (0.45 - 0.25) * math.log(0.45 / 0.25)
        + (0.2 - 0.25) * math.log(0.2 / 0.25)
        + (0.05 - 1e-4) * math.log(0.05 / 1e-4)
    )
    assert d.psi == pytest.approx(expected, rel=1e-9)
    assert d.total_variation == pytest.approx(0.5 * (0.2 + 0.2 + 0.05 + 0.05))
    assert [c.name for c in d.categories] == ["other", "2", "1", "3"]  # largest PSI term first
    assert d.moved_categories == ["other", "2", "1"]
    assert d.to_dict()["kind"] == "categorical" and d.current_mean == pytest.approx(2.15)
