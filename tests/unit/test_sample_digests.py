"""`kiln.data.sample_digests`: the content hash retraining uses to keep held-out samples out
of training, whatever shape and dtype the same values arrive in."""

from __future__ import annotations

import numpy as np

from kiln.data import sample_digests


def test_equal_values_hash_equal_across_shapes_and_dtypes() -> None:
    rng = np.random.default_rng(0)
    # Values a float32 holds exactly (pixels / 16), as in the built-in data sets.
    x = (rng.integers(0, 17, size=(5, 1, 8, 8)) / 16).astype(np.float32)
    digests = sample_digests(x)
    assert len(set(digests)) == 5
    assert sample_digests(x.reshape(5, 64)) == digests  # flattened, as the traffic log holds it
    assert sample_digests(x.astype(np.float64)) == digests  # a float64 client or data set
    assert sample_digests(x.reshape(5, 8, 8).astype(np.float16)) == digests
    assert sample_digests(np.asfortranarray(x.reshape(5, 64))) == digests  # memory layout
    assert sample_digests(x[::-1]) == digests[::-1]


def test_negative_zero_is_zero_and_other_values_differ() -> None:
    zeros = np.zeros((1, 4), np.float32)
    assert sample_digests(-zeros) == sample_digests(zeros)
    nudged = zeros.copy()
    nudged[0, 3] = np.float32(1e-7)
    assert sample_digests(nudged) != sample_digests(zeros)
    # float32 is the logged precision: values that only float64 tells apart are equal.
    assert sample_digests(np.array([[0.1]])) == sample_digests(np.array([[0.1 + 1e-12]]))


def test_no_samples_no_digests() -> None:
    assert sample_digests(np.zeros((0,), np.float32)) == []
    assert sample_digests(np.zeros((0, 1, 28, 28), np.float32)) == []
