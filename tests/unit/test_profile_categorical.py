"""Categorical vector features in reference profiles: which features are categorical (real
autompg and diabetes columns), their shares, and numeric summaries left exactly as they were."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest

from kiln.data.catalog import load_dataset
from kiln.data.profile import (
    MAX_CATEGORIES,
    MIN_PER_CATEGORY,
    categories,
    feature_summary,
    input_profile,
)
from kiln.settings import Settings

NUMERIC_KEYS = {"edges", "fractions", "quantiles", "mean", "std"}


def profile_of(name: str) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    ds = load_dataset(name, Settings())
    x = ds.train.x.reshape(len(ds.train.x), -1).astype(np.float64)
    return x, input_profile(ds.train.x, ds.input_shape)["features"]


def test_autompg_cylinders_model_year_and_origin_are_categorical() -> None:
    x, feats = profile_of("autompg")
    # cylinders, displacement, horsepower, weight, acceleration, model_year, origin
    assert [n for n, f in feats.items() if f.get("kind") == "categorical"] == [
        "x[0]",
        "x[5]",
        "x[6]",
    ]
    assert feats["x[0]"]["categories"] == [3, 4, 5, 6, 8]
    assert feats["x[5]"]["categories"] == list(range(70, 83))
    assert feats["x[6]"]["categories"] == [1, 2, 3]
    for name, column in (("x[0]", 0), ("x[5]", 5), ("x[6]", 6)):
        shares = feats[name]["shares"]
        assert isinstance(shares, list)
        expected = [float(np.mean(x[:, column] == c)) for c in feats[name]["categories"]]
        assert shares == pytest.approx(expected, rel=1e-5)
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)


def test_diabetes_sex_is_categorical_age_is_not() -> None:
    _, feats = profile_of("diabetes")
    assert [n for n, f in feats.items() if "categories" in f] == ["x[1]"]
    assert feats["x[1]"]["categories"] == [1, 2]
    assert "categories" not in feats["x[0]"]  # age: whole years, but 57 distinct values


def test_categorical_features_keep_their_numeric_summary() -> None:
    x, feats = profile_of("autompg")
    for i, (name, summary) in enumerate(feats.items()):
        numeric = {k: v for k, v in summary.items() if k in NUMERIC_KEYS}
        assert numeric == feature_summary(x[:, i]), name
        extra = set(summary) - NUMERIC_KEYS
        assert extra in (set(), {"kind", "categories", "shares"}), name


def test_what_counts_as_categorical() -> None:
    rng = np.random.default_rng(0)
    few = rng.integers(0, MAX_CATEGORIES, 1000).astype(np.float64)
    found = categories(few)
    assert found is not None and len(found) == MAX_CATEGORIES
    assert categories(rng.integers(0, MAX_CATEGORIES + 1, 1000).astype(np.float64)) is None
    assert categories(few + 0.5) is None  # not whole numbers
    three = np.array([1.0, 2.0, 3.0] * MIN_PER_CATEGORY)
    assert categories(three) is not None and categories(three[:-1]) is None  # too few samples
    assert categories(np.array([1.0, np.nan] * 20)) is None


def test_image_inputs_are_never_categorical() -> None:
    # Binary pixels: every image feature takes few whole values, none is categorical.
    x = (np.random.default_rng(0).random((200, 1, 8, 8)) > 0.5).astype(np.float32)
    feats = input_profile(x, [1, 8, 8])["features"]
    assert all(set(f) == NUMERIC_KEYS for f in feats.values())


def test_digits_profile_is_byte_identical_to_before_categories() -> None:
    # The digits input profile as Kiln built it before categorical features existed.
    ds = load_dataset("digits", Settings())
    profile = input_profile(ds.train.x, ds.input_shape)
    digest = hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()
    assert digest == "c9f309704ee81740015676bbc6d9a7381b51345e6983f6cb099e5b8e337c1efe"
