"""kiln.data: built-in sets, deterministic splits, fingerprints and user data, with real files."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from kiln.data import CATALOG, load_dataset
from kiln.errors import DatasetInvalid, DatasetNotFound
from kiln.settings import Settings


@pytest.fixture(scope="module")
def mnist() -> object:
    return load_dataset("mnist-5k", Settings())


def test_mnist_5k_is_the_real_5000_digits(mnist: object) -> None:
    from kiln.data import Dataset

    assert isinstance(mnist, Dataset)
    assert mnist.input_shape == (1, 28, 28)
    assert len(mnist.train) + len(mnist.val) + len(mnist.test) == 5000
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (4000, 500, 500)
    assert mnist.train.x.dtype == np.float32 and mnist.train.y.dtype == np.int64
    assert mnist.train.x.min() == 0.0 and mnist.train.x.max() == 1.0
    # stratified: every split has all ten classes in equal measure
    assert np.bincount(mnist.test.y).tolist() == [50] * 10


def test_splits_are_disjoint(mnist: object) -> None:
    from kiln.data import Dataset

    assert isinstance(mnist, Dataset)
    rows = {s.tobytes() for s in mnist.train.x}
    assert not any(s.tobytes() in rows for s in mnist.test.x[:100])


def test_same_seed_same_split_and_fingerprint() -> None:
    a = load_dataset("digits", Settings(), seed=3)
    b = load_dataset("digits", Settings(), seed=3)
    c = load_dataset("digits", Settings(), seed=4)
    assert a.fingerprint == b.fingerprint
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.test.y, b.test.y)
    assert c.fingerprint != a.fingerprint
    assert not np.array_equal(a.test.y, c.test.y)


def test_digits_28_uses_mnist_framing_and_range() -> None:
    digits = load_dataset("digits", Settings())
    framed = load_dataset("digits-28", Settings())
    assert digits.input_shape == (1, 8, 8)
    assert framed.input_shape == (1, 28, 28)
    x = framed.train.x
    assert x.min() >= 0.0 and x.max() <= 1.0
    # MNIST frames a 20x20 digit with a 4-pixel empty border
    assert not x[:, :, :4, :].any() and not x[:, :, 24:, :].any()
    assert not x[:, :, :, :4].any() and not x[:, :, :, 24:].any()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_and_keeps_its_test_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(60) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    ds = load_dataset("fashion-mnist", Settings(fashion_mnist_dir=tmp_path))
    assert len(ds.test) == 20 and len(ds.train) + len(ds.val) == 60
    assert ds.class_names[0] == "t-shirt" and ds.split_spec.predefined_test


def test_fashion_mnist_missing_names_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist", Settings(fashion_mnist_dir=tmp_path / "nope"))
    assert "KILN_FASHION_MNIST_DIR" in str(err.value)


def test_unknown_name_lists_the_catalog_and_suggests() -> None:
    with pytest.raises(DatasetNotFound, match="did you mean 'mnist-5k'") as err:
        load_dataset("mnist5k", Settings())
    for name in CATALOG:
        assert name in str(err.value)


def test_parquet_features_and_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "iris.parquet"
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 4)).astype(np.float32)
    labels = ["setosa", "versicolor", "virginica"] * 20
    pl.DataFrame({"features": features.tolist(), "label": labels}).write_parquet(path)
    ds = load_dataset(str(path), Settings())
    assert ds.input_shape == (4,)
    assert ds.class_names == ("setosa", "versicolor", "virginica")


def test_parquet_numeric_columns_and_square_image_lists(tmp_path: Path) -> None:
    cols = tmp_path / "cols.parquet"
    pl.DataFrame({"a": [0.1, 0.2] * 10, "b": [1.0, 2.0] * 10, "label": [0, 1] * 10}).write_parquet(
        cols
    )
    assert load_dataset(str(cols), Settings()).input_shape == (2,)
    img = tmp_path / "img.parquet"
    pl.DataFrame({"image": [[0.5] * 16] * 20, "label": [0, 1] * 10}).write_parquet(img)
    assert load_dataset(str(img), Settings()).input_shape == (1, 4, 4)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pl.DataFrame({"features": [[1.0, 2.0]] * 10}), "no 'label' column"),
        (pl.DataFrame({"features": [[1.0, float("nan")]] * 10, "label": [0, 1] * 5}), "NaN"),
        (pl.DataFrame({"features": [[1.0, 2.0], [1.0]] * 5, "label": [0, 1] * 5}), "ragged"),
        (
            pl.DataFrame(
                {"features": [], "label": []},
                schema={"features": pl.List(pl.Float32), "label": pl.Int64},
            ),
            "empty",
        ),
    ],
    ids=["no-label", "nan", "ragged", "empty"],
)
def test_bad_parquet_is_refused_with_the_reason(
    tmp_path: Path, frame: pl.DataFrame, message: str
) -> None:
    path = tmp_path / "bad.parquet"
    frame.write_parquet(path)
    with pytest.raises(DatasetInvalid, match=message):
        load_dataset(str(path), Settings())


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetInvalid, match="cannot read"):
        load_dataset(str(path), Settings())


def _png(value: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_one_subfolder_per_class(tmp_path: Path) -> None:
    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(10):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(value))
    # a JPEG of another size is resized into the common frame
    Image.new("L", (16, 16), 200).save(tmp_path / "dog" / "big.jpg", format="JPEG")
    ds = load_dataset(str(tmp_path), Settings())
    assert ds.class_names == ("cat", "dog")
    assert ds.input_shape == (1, 8, 8)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 21


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(i))
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetInvalid, match=r"broken\.png"):
        load_dataset(str(tmp_path), Settings())


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="does not exist"):
        load_dataset(str(tmp_path / "no-such-folder"), Settings())


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetInvalid, match="empty"):
        load_dataset(str(tmp_path), Settings())
