"""Reference profiles: deterministic, compact, and features that mean what their names say."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kiln.data.profile import (
    MAX_VECTOR_FEATURES,
    bin_fractions,
    confidences,
    features,
    input_profile,
    reference_profile,
)
from kiln.traffic import predictions_and_confidences


def square(size: int = 10, top: int = 2, left: int = 4, h: int = 3, w: int = 2) -> np.ndarray:
    img = np.zeros((1, 1, size, size), dtype=np.float32)
    img[0, 0, top : top + h, left : left + w] = 1.0
    return img


def test_image_features_by_hand() -> None:
    x = np.concatenate([square(), np.zeros((1, 1, 10, 10), dtype=np.float32)])
    spec = input_profile(np.concatenate([x, np.ones((1, 1, 10, 10), np.float32)]), [1, 10, 10])
    names, m = features(x, spec)
    f = dict(zip(names, m[0], strict=True))
    assert f["mean_intensity"] == pytest.approx(6 / 100)
    assert f["ink_fraction"] == pytest.approx(6 / 100)
    assert f["centroid_x"] == pytest.approx((4.5 + 0.5) / 10)  # columns 4-5, pixel centres
    assert f["centroid_y"] == pytest.approx((3 + 0.5) / 10)  # rows 2-4
    assert (f["bbox_width"], f["bbox_height"]) == (pytest.approx(0.2), pytest.approx(0.3))
    # 4x4 grid on 10 rows/cols: blocks of 3,3,2,2; the square covers rows 2-4, cols 4-5.
    assert f["block_r0c1"] == pytest.approx(2 / 9)  # rows 0-2 x cols 3-5: 1 row x 2 cols ink
    assert f["block_r1c1"] == pytest.approx(4 / 9)
    empty = dict(zip(names, m[1], strict=True))
    assert empty["ink_fraction"] == 0 and empty["bbox_width"] == 0
    assert empty["centroid_x"] == 0.5  # no ink: the centre, not NaN


def test_profiles_are_deterministic_and_compact() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3000, 1, 28, 28), dtype=np.float32)
    logits = rng.standard_normal((500, 10))
    a = reference_profile(x, [1, 28, 28], logits, rng.integers(0, 10, 500))
    b = reference_profile(x.copy(), [1, 28, 28], logits.copy(), None)
    assert a["inputs"] == b["inputs"] and len(a["inputs"]["features"]) == 6 + 16
    text = json.dumps(a)
    assert len(text) < 64_000  # stored in every version's config
    assert json.loads(text) == a


def test_vectors_keep_the_highest_variance_features() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 40)) * np.arange(1, 41)  # variance grows with the index
    profile = input_profile(x, [40])
    assert profile["kind"] == "vector"
    assert profile["indices"] == list(range(40 - MAX_VECTOR_FEATURES, 40))
    names, m = features(x[:3], profile)
    assert names[0] == "x[8]" and m.shape == (3, MAX_VECTOR_FEATURES)


def test_bin_fractions_sum_to_one_and_put_edges_in_the_lower_bin() -> None:
    fractions = bin_fractions(np.array([0.0, 1.0, 1.5, 2.0, 3.0]), [1.0, 2.0])
    assert fractions.tolist() == [0.4, 0.4, 0.2]


def test_confidence_rule_matches_the_traffic_log() -> None:
    scores = np.array([[2.0, 0.5, -1.0], [0.2, 0.5, 0.3], [0.0, 0.0, 0.0]])
    top_a, conf_a = confidences(scores)
    top_b, conf_b = predictions_and_confidences(scores)
    assert top_a.tolist() == top_b.tolist()
    np.testing.assert_allclose(conf_a, conf_b)
    assert conf_a[1] == pytest.approx(0.5)  # probabilities are taken as they are
