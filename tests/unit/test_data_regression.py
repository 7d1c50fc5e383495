"""kiln.data for regression: the diabetes and autompg sets, Parquet targets, random splits,
target validation, summaries and profiles; classification fingerprints as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from kiln.data import CATALOG, REGRESSION, Dataset, load_dataset, task_of
from kiln.data.profile import reference_profile
from kiln.errors import DatasetInvalid
from kiln.settings import Settings

# Computed with the code before regression existed (commit b257b19): versions registered
# then record these, and the held-out gate and compile compare them with a fresh load.
CLASSIFICATION_FINGERPRINTS = {
    ("mnist-5k", 0): "7d57f2e974ebb046e5e4fb4a01e589c4117e5c502110566bec0349fb3f4c394e",
    ("digits", 0): "a9ff7695a0587017132cac75a5d0d59302e1735da29c8e20bb85e5816d10eeca",
    ("digits", 3): "9e26daac3f7144bfbffd6bb778a2e4d05b5ee8fcc845e8c3bd0c5dedbec2f6ff",
}
PARQUET_CLASSIFICATION_FINGERPRINT = (
    "f37b9218c6da8acf966e2c6a21a05b765f126ce7fff1409fe4a7e6f327cb292e"
)


@pytest.fixture(scope="module")
def diabetes() -> Dataset:
    return load_dataset("diabetes", Settings())


def _write(path: Path, columns: dict[str, Any]) -> str:
    pl.DataFrame(columns).write_parquet(path)
    return str(path)


def _all_rows(ds: Dataset) -> np.ndarray:
    return np.concatenate([ds.train.x, ds.val.x, ds.test.x])


def test_diabetes_is_442_patients_in_raw_units(diabetes: Dataset) -> None:
    assert diabetes.task == REGRESSION and diabetes.class_names == ()
    assert diabetes.input_shape == (10,)
    assert (len(diabetes.train), len(diabetes.val), len(diabetes.test)) == (354, 44, 44)
    assert diabetes.train.x.dtype == np.float32 and diabetes.train.y.dtype == np.float32
    ages = _all_rows(diabetes)[:, 0]
    # Raw units: ages in years, not scikit-learn's default centred and scaled columns.
    assert ages.min() >= 19 and ages.max() <= 79
    targets = np.concatenate([diabetes.train.y, diabetes.val.y, diabetes.test.y])
    assert (targets.min(), targets.max()) == (25.0, 346.0)
    assert "bmi" in diabetes.source


def test_autompg_is_392_cars_with_seven_numeric_features() -> None:
    ds = load_dataset("autompg", Settings())
    assert ds.task == REGRESSION and ds.input_shape == (7,)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 392
    x = _all_rows(ds)
    assert set(np.unique(x[:, 0])) <= {3.0, 4.0, 5.0, 6.0, 8.0}  # cylinders
    assert set(np.unique(x[:, 6])) == {1.0, 2.0, 3.0}  # origin, a numeric code
    mpg = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    assert mpg.min() >= 9.0 and mpg.max() <= 46.6 + 1e-4
    assert "origin" in ds.source and "mpg" in ds.source


def test_catalog_lists_the_regression_sets_with_their_task() -> None:
    assert CATALOG["diabetes"].task == CATALOG["autompg"].task == REGRESSION
    assert CATALOG["digits"].task == "classification"
    assert task_of("autompg") == REGRESSION and task_of("mnist-5k") == "classification"


def test_random_splits_are_deterministic_and_cover_every_row(diabetes: Dataset) -> None:
    again = load_dataset("diabetes", Settings())
    other = load_dataset("diabetes", Settings(), seed=1)
    assert again.fingerprint == diabetes.fingerprint
    assert np.array_equal(again.test.x, diabetes.test.x)
    assert np.array_equal(again.test.y, diabetes.test.y)
    assert other.fingerprint != diabetes.fingerprint
    assert not np.array_equal(other.test.y, diabetes.test.y)
    # Every sample lands in exactly one split.
    rows = sorted(map(bytes, _all_rows(diabetes)))
    full = load_dataset("diabetes", Settings(), seed=5)
    assert rows == sorted(map(bytes, _all_rows(full)))


@pytest.mark.parametrize(("name", "seed"), sorted(CLASSIFICATION_FINGERPRINTS))
def test_classification_fingerprints_are_unchanged(name: str, seed: int) -> None:
    assert (
        load_dataset(name, Settings(), seed=seed).fingerprint
        == (CLASSIFICATION_FINGERPRINTS[(name, seed)])
    )


def test_classification_parquet_fingerprint_is_unchanged(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.parquet",
        {
            "a": ((np.arange(40) * 0.37) % 1.3).astype(np.float32),
            "b": np.arange(40, dtype=np.float32),
            "label": [0, 1] * 20,
        },
    )
    ds = load_dataset(path, Settings())
    assert ds.task == "classification"
    assert ds.fingerprint == PARQUET_CLASSIFICATION_FINGERPRINT


def test_parquet_with_a_numeric_target_is_a_regression_set(tmp_path: Path) -> None:
    a = np.arange(30, dtype=np.float64)
    path = _write(tmp_path / "r.parquet", {"a": a, "b": a % 7, "target": (2 * a).astype(int)})
    assert task_of(path) == REGRESSION
    ds = load_dataset(path, Settings())
    assert ds.task == REGRESSION and ds.class_names == () and ds.input_shape == (2,)
    assert ds.train.y.dtype == np.float32
    # The target is not a feature: each row's target is twice its first feature.
    for part in (ds.train, ds.val, ds.test):
        assert np.array_equal(part.y, 2 * part.x[:, 0])
    features = load_dataset(
        _write(tmp_path / "f.parquet", {"features": [[v, v] for v in a], "target": a}), Settings()
    )
    assert features.input_shape == (2,) and features.task == REGRESSION


def test_fingerprint_covers_the_targets(tmp_path: Path) -> None:
    a = np.arange(20, dtype=np.float64)
    first = load_dataset(_write(tmp_path / "1.parquet", {"a": a, "target": a}), Settings())
    changed = a.copy()
    changed[3] += 0.5
    second = load_dataset(_write(tmp_path / "2.parquet", {"a": a, "target": changed}), Settings())
    assert first.fingerprint != second.fingerprint


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"a": np.arange(20.0), "target": [1.0, 2.0, None, 4.0, 5.0, float("nan")] + [1.0] * 14},
            r"missing, NaN or infinite targets in 2 sample\(s\), first rows \[2, 5\]",
        ),
        ({"a": np.arange(20.0), "target": [1.0, float("inf")] * 10}, r"first rows \[1, 3,"),
        ({"a": np.arange(9.0), "target": np.arange(9.0)}, "has 9 samples; a regressor needs at"),
        ({"a": np.arange(20.0), "target": [3.5] * 20}, r"same target \(3.5\) in every sample"),
        (
            {"a": np.arange(20.0), "target": np.arange(20.0), "label": [0, 1] * 10},
            "both a 'label' and a 'target' column",
        ),
        ({"a": np.arange(20.0), "target": ["x", "y"] * 10}, "'target' holds String, not numbers"),
        ({"a": np.arange(20.0)}, "no 'label' column .*or a numeric 'target' column"),
    ],
    ids=["missing-and-nan", "infinite", "too-few", "constant", "both", "strings", "neither"],
)
def test_bad_regression_parquet_says_what_to_fix(
    tmp_path: Path, columns: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path / "bad.parquet", columns)
    with pytest.raises(DatasetInvalid, match=message):
        load_dataset(path, Settings())


def test_summary_shows_the_target_instead_of_class_counts(diabetes: Dataset) -> None:
    summary = diabetes.summary()
    assert summary["task"] == REGRESSION and summary["classes"] == []
    assert "class_counts" not in summary
    target = summary["target"]
    assert isinstance(target, dict) and set(target) == {"train", "val", "test"}
    assert set(target["train"]) == {"min", "max", "mean", "std"}
    assert target["train"]["min"] >= 25.0 and target["train"]["std"] > 0
    digits = load_dataset("digits", Settings()).summary()
    assert digits["task"] == "classification" and "class_counts" in digits


def test_kiln_datasets_show_and_list_regression_sets(cli: Any) -> None:
    shown = cli("datasets", "show", "diabetes", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert shown.json()["task"] == REGRESSION and shown.json()["sizes"]["test"] == 44
    table = cli("datasets", "show", "autompg")
    assert table.exit_code == 0 and "target (train)" in table.stdout
    listed = {row["name"]: row for row in cli("datasets", "list", "--json").json()["datasets"]}
    assert listed["diabetes"]["task"] == REGRESSION and listed["diabetes"]["samples"] == 442
    assert listed["autompg"]["samples"] == 392


def test_regression_reference_profile(diabetes: Dataset) -> None:
    predicted = diabetes.test.y[:, None] + 10.0  # off by exactly 10 everywhere
    profile = reference_profile(
        diabetes.train.x, diabetes.input_shape, predicted, diabetes.test.y, task=REGRESSION
    )
    predictions = profile["predictions"]
    assert predictions["task"] == REGRESSION and predictions["samples"] == 44
    assert predictions["rmse"] == pytest.approx(10.0)
    assert predictions["value"]["mean"] == pytest.approx(float(diabetes.test.y.mean()) + 10, 1e-4)
    assert set(predictions["value"]) >= {"edges", "fractions", "quantiles", "mean", "std"}
    assert profile["inputs"]["kind"] == "vector" and len(profile["inputs"]["features"]) == 10
    without = reference_profile(diabetes.train.x, (10,), predicted, task=REGRESSION)
    assert "rmse" not in without["predictions"]
