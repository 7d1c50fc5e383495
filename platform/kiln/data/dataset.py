"""The in-memory data set every loader returns: arrays, class names, splits and a fingerprint.

Inputs are float32 with raw values (pixels scaled to [0, 1] for the built-in image sets);
normalisation belongs to the model, so that a compiled engine takes the same raw inputs the
data set holds. A data set's task is "classification" (int64 class indices, splits stratified
by class) or "regression" (float32 targets in their own units, no classes, random splits).
Splits are deterministic for a given seed either way.

A text data set (`modality` "text") holds its samples as a 1-D object array of `str` with
`input_shape` (); the model's tokenizer turns them into token ids (`kiln.text`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.errors import DatasetInvalid

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
TENSOR = "tensor"
TEXT = "text"
MODALITIES = (TENSOR, TEXT)
MIN_REGRESSION_SAMPLES = 10
"""Fewer targets than this cannot fill train, validation and test splits with anything an
R^2 or an RMSE could be read from."""


@dataclass(frozen=True)
class SplitSpec:
    """How a data set is cut into train/val/test; part of the fingerprint."""

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Some sources ship their own test set (Fashion-MNIST); then only train/val are cut.
    predefined_test: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "predefined_test": self.predefined_test,
        }


@dataclass(frozen=True)
class Split:
    """One split: `x` float32 of shape (n, *input_shape), `y` of shape (n,): int64 class
    indices (classification) or float32 targets (regression)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A named, split, fingerprinted data set."""

    name: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    split_spec: SplitSpec
    fingerprint: str
    source: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    task: str = CLASSIFICATION
    """"classification" or "regression" (then `class_names` is empty and `y` float32)."""
    modality: str = TENSOR
    """"tensor" (float32 arrays) or "text" (`x` is a 1-D object array of `str`)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict[str, object]:
        """A JSON-ready description (what `kiln datasets show` prints): class counts per split
        for a classification set, the target's range, mean and std per split for regression."""
        parts = (("train", self.train), ("val", self.val), ("test", self.test))
        per_split: dict[str, object]
        if self.task == REGRESSION:
            per_split = {"target": {split: target_summary(part.y) for split, part in parts}}
        else:
            per_split = {
                "class_counts": {
                    split: np.bincount(part.y, minlength=self.num_classes).tolist()
                    for split, part in parts
                }
            }
        described: dict[str, object]
        if self.modality == TEXT:
            words = np.array([len(t.split()) for t in self.train.x], dtype=np.int64)
            described = {
                "modality": TEXT,
                "words_per_text": {
                    "mean": round(float(words.mean()), 1),
                    "median": int(np.median(words)),
                    "max": int(words.max()),
                },
            }
        else:
            everything = np.concatenate([self.train.x, self.val.x, self.test.x])
            described = {"value_range": [float(everything.min()), float(everything.max())]}
        return {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "input_shape": list(self.input_shape),
            "classes": list(self.class_names),
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            **per_split,
            **described,
            "split": self.split_spec.as_dict(),
            "fingerprint": self.fingerprint,
        }


def target_summary(y: np.ndarray) -> dict[str, float]:
    """Range, mean and standard deviation of regression targets, to float32's 7 significant
    digits (a float32 46.6 would otherwise print as 46.599998474121094)."""
    values = np.asarray(y, dtype=np.float64)
    stats = (values.min(), values.max(), values.mean(), values.std())
    return dict(zip(("min", "max", "mean", "std"), (float(f"{v:.7g}") for v in stats), strict=True))


@dataclass(frozen=True)
class RawData:
    """What a source loader returns before splitting."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    source: str
    # Sources with an official test set pass it here; the split then cuts only train/val.
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    task: str = CLASSIFICATION
    modality: str = TENSOR
    """"text": `x` (and `test_x`) are sequences of `str`."""


def validate_targets(name: str, y: np.ndarray) -> None:
    """Refuse regression targets no model can be fitted to or judged on."""
    if y.ndim != 1:
        raise DatasetInvalid(
            f"data set '{name}' has targets of shape {y.shape[1:]} per sample; a regressor "
            "here predicts one number per sample"
        )
    bad = ~np.isfinite(y)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise DatasetInvalid(
            f"data set '{name}' has missing, NaN or infinite targets in {int(bad.sum())} "
            f"sample(s), first rows {rows}; drop those rows or fill in their targets"
        )
    if y.size < MIN_REGRESSION_SAMPLES:
        raise DatasetInvalid(
            f"data set '{name}' has {y.size} samples; a regressor needs at least "
            f"{MIN_REGRESSION_SAMPLES} to fill its train, validation and test splits"
        )
    if float(np.ptp(y)) == 0.0:
        raise DatasetInvalid(
            f"data set '{name}' has the same target ({float(y[0]):g}) in every sample; "
            "there is nothing for a regressor to learn"
        )


def validate(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    class_names: tuple[str, ...],
    task: str = CLASSIFICATION,
) -> None:
    """Refuse data no model can learn from, naming the problem and where to look."""
    if x.shape[0] == 0:
        raise DatasetInvalid(f"data set '{name}' is empty: it has no samples")
    if x.shape[0] != y.shape[0]:
        raise DatasetInvalid(
            f"data set '{name}' has {x.shape[0]} inputs but {y.shape[0]} labels; "
            "every sample needs exactly one label"
        )
    if x.dtype == object:
        validate_texts(name, x)
        bad = np.zeros(x.shape[0], dtype=bool)
    else:
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise DatasetInvalid(
            f"data set '{name}' has NaN or infinite feature values in {int(bad.sum())} "
            f"sample(s), first rows {rows}; clean or drop them before training"
        )
    if task == REGRESSION:
        validate_targets(name, y)
        return
    if len(class_names) < 2:
        raise DatasetInvalid(
            f"data set '{name}' has {len(class_names)} class(es); a classifier needs at least 2"
        )
    if y.min() < 0 or y.max() >= len(class_names):
        raise DatasetInvalid(f"data set '{name}' has labels outside 0..{len(class_names) - 1}")


def validate_texts(name: str, x: np.ndarray) -> None:
    """Refuse text samples that are not strings or hold no text, naming the first rows."""
    if x.ndim != 1:
        raise DatasetInvalid(f"data set '{name}' has texts of shape {x.shape}; one text per row")
    not_text = [i for i, t in enumerate(x) if not isinstance(t, str)]
    if not_text:
        raise DatasetInvalid(
            f"data set '{name}' has {len(not_text)} sample(s) that are not text, first rows "
            f"{not_text[:5]} (e.g. {type(x[not_text[0]]).__name__}); every sample must be a string"
        )
    empty = [i for i, t in enumerate(x) if not t.strip()]
    if empty:
        raise DatasetInvalid(
            f"data set '{name}' has {len(empty)} empty or blank text(s), first rows "
            f"{empty[:5]}; drop those rows or fill in their text"
        )


def text_array(texts: list[str] | np.ndarray) -> np.ndarray:
    """A 1-D object array of `texts` (numpy would otherwise make a fixed-width unicode one)."""
    array = np.empty(len(texts), dtype=object)
    array[:] = list(texts)
    return array


def _hash_array(h: Any, array: np.ndarray) -> None:
    if array.dtype == object:  # texts: each as its UTF-8 bytes, length-prefixed
        h.update(f"text{array.shape}".encode())
        for text in array:
            data = str(text).encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return
    contiguous = np.ascontiguousarray(array)
    h.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
    h.update(contiguous.tobytes())


def fingerprint(
    x: np.ndarray,
    y: np.ndarray,
    class_names: tuple[str, ...],
    spec: SplitSpec,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    task: str = CLASSIFICATION,
    modality: str = TENSOR,
) -> str:
    """sha256 over the data, the labels or targets, the class names and the split spec (for
    lineage). A regression set's task is hashed too; a classification set's record is what it
    was before regression existed, so the fingerprints of existing versions still match."""
    h = hashlib.sha256()
    arrays = [x, y] + (list(test) if test is not None else [])
    for array in arrays:
        _hash_array(h, array)
    record: dict[str, object] = {"classes": list(class_names), "split": spec.as_dict()}
    if task != CLASSIFICATION:
        record["task"] = task
    if modality != TENSOR:
        record["modality"] = modality
    h.update(json.dumps(record).encode())
    return h.hexdigest()


def sample_digests(x: np.ndarray) -> list[bytes]:
    """A content hash per sample of `x` (first axis: samples), equal for equal inputs however
    they are held.

    Each sample is hashed as the traffic log stores an input: its values flattened and cast to
    float32, so a sample of shape (1, 28, 28) in float64 and one of shape (784,) in float32
    with the same values get the same digest; -0.0 counts as 0.0. A text's digest is that of
    its UTF-8 bytes. Retraining uses it to keep
    held-out samples out of training and to de-duplicate resent inputs.
    """
    if len(x) == 0:
        return []
    if np.asarray(x).dtype == object:  # texts: their UTF-8 bytes, as the traffic log has them
        return [hashlib.blake2b(str(t).encode("utf-8"), digest_size=16).digest() for t in x]
    # Adding +0.0 turns -0.0 into 0.0 (their bytes differ, their values do not).
    flat = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1) + np.float32(0))
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def stratified_indices(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Cut indices into len(fractions)+1 parts per class (the last part takes the rest)."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        start = 0
        for i, frac in enumerate(fractions):
            n = round(frac * idx.size)
            parts[i].append(idx[start : start + n])
            start += n
        parts[-1].append(idx[start:])
    # A second permutation mixes the classes within each part.
    return [rng.permutation(np.concatenate(p)) for p in parts]


def random_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Cut a seeded permutation of range(n) into len(fractions)+1 parts (the last takes the
    rest): the split for targets, which have no classes to stratify by."""
    order = np.random.default_rng(seed).permutation(n)
    parts, start = [], 0
    for frac in fractions:
        size = round(frac * n)
        parts.append(order[start : start + size])
        start += size
    parts.append(order[start:])
    return parts


def _indices(y: np.ndarray, fractions: tuple[float, ...], seed: int, task: str) -> list[np.ndarray]:
    if task == REGRESSION:
        return random_indices(y.size, fractions, seed)
    return stratified_indices(y, fractions, seed)


def build(name: str, raw: RawData, spec: SplitSpec) -> Dataset:
    """Validate raw data, cut it into splits and fingerprint the result."""
    task = raw.task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} for data set '{name}'")  # a loader's bug
    validate(name, raw.x, raw.y, raw.class_names, task)
    # Targets keep float32, the dtype a regressor's output has; classes are int64 indices.
    y_dtype = np.float32 if task == REGRESSION else np.int64
    x_dtype: Any = object if raw.modality == TEXT else np.float32
    x = text_array(raw.x) if raw.modality == TEXT else np.ascontiguousarray(raw.x, dtype=x_dtype)
    y = np.ascontiguousarray(raw.y, dtype=y_dtype)
    if raw.test_x is not None and raw.test_y is not None:
        test_x = (
            text_array(raw.test_x)
            if raw.modality == TEXT
            else np.ascontiguousarray(raw.test_x, dtype=x_dtype)
        )
        test_y = np.ascontiguousarray(raw.test_y, dtype=y_dtype)
        validate(f"{name} (test)", test_x, test_y, raw.class_names, task)
        spec = SplitSpec(spec.seed, spec.val_fraction, 0.0, predefined_test=True)
        val_idx, train_idx = _indices(y, (spec.val_fraction,), spec.seed, task)
        test = Split(test_x, test_y)
        fp = fingerprint(x, y, raw.class_names, spec, (test_x, test_y), task, raw.modality)
    else:
        val_idx, test_idx, train_idx = _indices(
            y, (spec.val_fraction, spec.test_fraction), spec.seed, task
        )
        test = Split(x[test_idx], y[test_idx])
        fp = fingerprint(x, y, raw.class_names, spec, task=task, modality=raw.modality)
    for split_name, idx in (("train", train_idx), ("validation", val_idx)):
        if idx.size == 0:
            raise DatasetInvalid(
                f"data set '{name}' has too few samples ({y.size}) for a {split_name} split; "
                "add data or change the split fractions"
            )
    if len(test) == 0:
        raise DatasetInvalid(f"data set '{name}' has too few samples ({y.size}) for a test split")
    return Dataset(
        name=name,
        input_shape=tuple(int(d) for d in x.shape[1:]),
        class_names=raw.class_names,
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=test,
        split_spec=spec,
        fingerprint=fp,
        source=raw.source,
        task=task,
        modality=raw.modality,
    )
