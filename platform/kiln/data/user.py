"""User data: a Parquet or CSV file, or a folder of images, one subfolder per class.

Parquet or CSV (a path ending .csv, UTF-8, a header row): a `label` column (integers or
strings: a classification set) or a numeric `target` column (a regression set; never both),
and the inputs as either
  - an `image` column: encoded PNG/JPEG bytes, or lists of pixel values of square length,
  - a `features` column: lists of numbers (one vector per row),
  - a `text` column (and no `image` or `features`): one string per row, a text data set
    (classification only; a text that occurs more than once is kept once when its copies
    agree on the label, and dropped when they do not), or
  - every other numeric column (not `label` or `target`), one feature each.
Image folders: `ROOT/CLASS/*.png|jpg|jpeg`; grayscale stays one channel, anything else becomes
RGB; pixels are scaled to [0, 1]; images of another size are resized to the most common size.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from kiln.data.csv_files import read_csv
from kiln.data.dataset import CLASSIFICATION, REGRESSION, TENSOR, TEXT, RawData, text_array
from kiln.errors import DatasetInvalid, DatasetNotFound

if TYPE_CHECKING:  # polars is imported where a file is read, not when kiln.data is
    import polars as pl

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
TABLE_SUFFIXES = (".parquet", ".csv")
"""A user path ending in one of these is a file of rows; any other path an image folder."""
SHOWN_ROWS = 5
T = TypeVar("T")


def _labels(values: list[object], name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise DatasetInvalid(
            f"'{name}' has {len(missing)} row(s) with a missing label, first rows "
            f"{missing[:SHOWN_ROWS]}; every row needs one"
        )
    if all(isinstance(v, int | np.integer) for v in values):
        ints = np.asarray(values, dtype=np.int64)
        classes = sorted(set(ints.tolist()))
        # Integer labels 0..k-1 keep their meaning; anything else is re-indexed in sorted order.
        if classes == list(range(len(classes))):
            return ints, tuple(str(c) for c in classes)
        index = {c: i for i, c in enumerate(classes)}
        return np.asarray([index[v] for v in ints.tolist()], np.int64), tuple(map(str, classes))
    names = sorted({str(v) for v in values})
    index = {c: i for i, c in enumerate(names)}
    return np.asarray([index[str(v)] for v in values], dtype=np.int64), tuple(names)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = "L" if img.mode in ("L", "1", "I;16", "I") else "RGB"
            array = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetInvalid(f"cannot read image {where}: {exc}; remove or replace it") from exc
    return array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)


def prepare_image(data: bytes, channels: int, size: tuple[int, int], where: str) -> np.ndarray:
    """Decode PNG/JPEG bytes into a (channels, height, width) float32 array in [0, 1].

    The same steps the image-folder loader applies, so a served image is preprocessed exactly
    as training images were. Raises DatasetInvalid naming `where` for bytes that are no image.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise DatasetInvalid(f"cannot make a {channels}-channel image from {where}; 1 or 3 only")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            converted = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetInvalid(f"cannot read image {where}: {exc}; send a PNG or JPEG file") from exc
    array = np.asarray(converted, dtype=np.float32) / 255.0
    planes = array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
    return _conform(planes, channels, size)


def _stack_lists(column: list[object], file: Path, col: str) -> np.ndarray:
    lengths = Counter(len(v) if isinstance(v, list | tuple | np.ndarray) else -1 for v in column)
    if -1 in lengths:
        raise DatasetInvalid(f"{file}: column '{col}' must hold a list of numbers in every row")
    if len(lengths) > 1:
        shown = ", ".join(f"{n} rows of length {k}" for k, n in lengths.most_common(3))
        raise DatasetInvalid(
            f"{file}: column '{col}' is ragged ({shown}); every row needs the same length"
        )
    try:
        return np.asarray(column, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DatasetInvalid(f"{file}: column '{col}' holds non-numeric values: {exc}") from exc


TARGET = "target"
"""The column that makes a Parquet file a regression set."""


def task_of_columns(schema: Mapping[str, Any], path: Path) -> str:
    """The task a Parquet file's columns (name -> polars dtype) say: a `label` column is
    classification, a numeric `target` column regression. Raises DatasetInvalid for neither,
    for both, and for a `target` that is not numeric."""
    has_label, has_target = "label" in schema, TARGET in schema
    if has_label and has_target:
        raise DatasetInvalid(
            f"{path} has both a 'label' and a 'target' column; keep 'label' for a classifier "
            "(classes) or 'target' for a regressor (numbers), and rename or drop the other"
        )
    if has_target:
        dtype = schema[TARGET]
        if not dtype.is_numeric():
            raise DatasetInvalid(
                f"{path}: column 'target' holds {dtype}, not numbers; a regression target must "
                "be numeric (name the column 'label' for classes)"
            )
        return REGRESSION
    if not has_label:
        raise DatasetInvalid(
            f"{path} has no 'label' column (columns: {', '.join(schema)}); add one holding "
            "each row's class, or a numeric 'target' column holding each row's value for a "
            "regressor"
        )
    return CLASSIFICATION


def _read_parquet(path: Path, read: Callable[[Path], T]) -> T:
    """`read(path)` (the whole file or its schema), with Kiln's errors for a missing or
    unreadable file."""
    if not path.is_file():
        raise DatasetNotFound(f"Parquet file {path} does not exist")
    try:
        return read(path)
    except Exception as exc:  # polars raises several unrelated types for unreadable files
        raise DatasetInvalid(f"cannot read {path} as Parquet: {exc}") from exc


def read_table(path: Path) -> pl.DataFrame:
    """Every row of a user's .parquet or .csv file."""
    import polars as pl

    return read_csv(path) if path.suffix == ".csv" else _read_parquet(path, pl.read_parquet)


def _table_schema(path: Path) -> Mapping[str, Any]:
    import polars as pl

    if path.suffix == ".csv":  # a CSV's types are only known from its values
        return read_csv(path).schema
    return _read_parquet(path, pl.read_parquet_schema)


def is_text(schema: Mapping[str, Any]) -> bool:
    """Whether a file with these columns is a text data set: a `text` column, and no `image`
    or `features` column (which an image or feature set with captions may carry beside)."""
    return "text" in schema and "image" not in schema and "features" not in schema


def table_task(path: Path) -> str:
    """The task of a Parquet file, from its schema alone (no rows are read), or of a CSV."""
    return task_of_columns(_table_schema(path), path)


def table_modality(path: Path) -> str:
    """ "text" for a file of texts (see `is_text`), else "tensor"."""
    return TEXT if is_text(_table_schema(path)) else TENSOR


def _parquet_inputs(frame: pl.DataFrame, path: Path) -> np.ndarray:
    """The input array of a Parquet data set: its 'image', 'features' or numeric columns."""
    import polars as pl

    if "image" in frame.columns:
        values = frame["image"].to_list()
        if all(isinstance(v, bytes) for v in values):
            images = [_decode_image(v, f"{path} row {i}") for i, v in enumerate(values)]
            shapes = Counter(img.shape for img in images)
            if len(shapes) > 1:
                raise DatasetInvalid(f"{path}: images have different sizes: {dict(shapes)}")
            x = np.stack(images)
        else:
            flat = _stack_lists(values, path, "image")
            side = round(flat.shape[1] ** 0.5)
            if side * side != flat.shape[1]:
                raise DatasetInvalid(
                    f"{path}: 'image' rows have {flat.shape[1]} values, not a square image; "
                    "use a 'features' column for vectors"
                )
            x = flat.reshape(-1, 1, side, side)
    elif "features" in frame.columns:
        x = _stack_lists(frame["features"].to_list(), path, "features")
    else:
        numeric = [
            c for c, t in frame.schema.items() if c not in ("label", TARGET) and t.is_numeric()
        ]
        if not numeric:
            raise DatasetInvalid(_no_inputs_message(frame.schema, path))
        x = frame.select(numeric).cast(pl.Float32).fill_null(float("nan")).to_numpy()
    return x


def _no_inputs_message(schema: Mapping[str, Any], path: Path) -> str:
    import polars as pl

    columns = ", ".join(schema)
    strings = [c for c, t in schema.items() if c not in ("label", TARGET) and t == pl.String]
    if strings:
        return (
            f"{path} has no 'text' column (columns: {columns}); name the column that holds the "
            f"texts 'text' (string columns here: {', '.join(strings)}) for a text data set"
        )
    return (
        f"{path} has no inputs (columns: {columns}): add a 'text' column (one string per "
        "row), an 'image' or 'features' column, or numeric columns"
    )


def _rows(rows: list[int]) -> str:
    return f"{len(rows)} row(s), first rows {rows[:SHOWN_ROWS]}"


def text_column(frame: pl.DataFrame, path: Path) -> list[str]:
    """The `text` column's strings, or DatasetInvalid naming the rows that hold no text: null,
    empty or blank, not a string, or (for a binary column) bytes that are not UTF-8."""
    import polars as pl

    column = frame["text"]
    values: list[Any] = column.to_list()
    if column.dtype == pl.Binary:
        bad: list[int] = []
        for i, v in enumerate(values):
            try:
                values[i] = None if v is None else v.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(i)
        if bad:
            raise DatasetInvalid(
                f"{path}: column 'text' holds bytes that are not UTF-8 in {_rows(bad)}; "
                "store the texts as UTF-8 strings"
            )
    elif column.dtype not in (pl.String, pl.Null):
        raise DatasetInvalid(
            f"{path}: column 'text' holds {column.dtype}, not strings; a text data set needs "
            "one string per row (cast the column to strings, or rename it if it is no text)"
        )
    nulls = [i for i, v in enumerate(values) if v is None]
    if nulls:
        raise DatasetInvalid(
            f"{path}: column 'text' is missing (null) in {_rows(nulls)}; fill in those texts "
            "or drop the rows"
        )
    blank = [i for i, v in enumerate(values) if not v.strip()]
    if blank:
        raise DatasetInvalid(
            f"{path}: column 'text' is empty or blank in {_rows(blank)}; fill in those texts "
            "or drop the rows"
        )
    return values


def dedupe_texts(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray, str]:
    """Keep one copy of a repeated text whose copies share a label; drop every copy of one
    whose copies disagree. A text in two splits would be tested on what was trained on."""
    by_text: dict[str, set[int]] = {}
    for text, label in zip(texts, labels.tolist(), strict=True):
        by_text.setdefault(text, set()).add(label)
    seen: set[str] = set()
    keep: list[int] = []
    for i, text in enumerate(texts):
        if len(by_text[text]) == 1 and text not in seen:
            keep.append(i)
        seen.add(text)
    conflicting = sum(1 for v in by_text.values() if len(v) > 1)
    note = f" ({len(texts) - len(keep)} repeated rows dropped" if len(keep) < len(texts) else ""
    if conflicting:
        note += f", {conflicting} text(s) with conflicting labels among them"
    return [texts[i] for i in keep], labels[keep], note + (")" if note else "")


def load_table(path: Path) -> RawData:
    """A user's .parquet or .csv file as a data set (see the module docstring)."""
    import polars as pl

    frame = read_table(path)
    task = task_of_columns(frame.schema, path)
    kind = "csv" if path.suffix == ".csv" else "parquet"
    classes: tuple[str, ...] = ()
    if frame.height == 0:
        raise DatasetInvalid(f"data set '{path}' is empty: it has no rows")
    if is_text(frame.schema):
        if task == REGRESSION:
            raise DatasetInvalid(
                f"{path} has a 'text' column and a 'target' column; text data sets are "
                "classification here: give each text its class in a 'label' column"
            )
        texts = text_column(frame, path)
        y, classes = _labels(frame["label"].to_list(), str(path))
        texts, y, note = dedupe_texts(texts, y)
        return RawData(text_array(texts), y, classes, f"{kind}: {path}{note}", modality=TEXT)
    if task == REGRESSION:
        # Missing targets become NaN, which validation lists by row.
        target = frame[TARGET].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        y = np.asarray(target, dtype=np.float32)
    else:
        y, classes = _labels(frame["label"].to_list(), str(path))
    x = _parquet_inputs(frame, path)
    return RawData(x.astype(np.float32), y, classes, f"{kind}: {path}", task=task)


def load_image_folder(root: Path) -> RawData:
    if not root.is_dir():
        raise DatasetNotFound(
            f"image folder {root} does not exist; give a directory with one subfolder per class"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetInvalid(
            f"image folder {root} has no class subfolders; put each class's images in ROOT/CLASS/"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_decode_image(file.read_bytes(), str(file)))
                labels.append(index)
    if not images:
        raise DatasetInvalid(f"image folder {root} holds no PNG or JPEG files; it is empty")
    channels = max(img.shape[0] for img in images)
    size = Counter(img.shape[1:] for img in images).most_common(1)[0][0]
    x = np.stack([_conform(img, channels, size) for img in images])
    return RawData(
        x, np.asarray(labels, np.int64), tuple(d.name for d in class_dirs), f"images: {root}"
    )


def _conform(img: np.ndarray, channels: int, size: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    if img.shape[1:] != size:
        planes = [
            np.asarray(
                Image.fromarray(p, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            )
            for p in img
        ]
        img = np.stack(planes)
    if img.shape[0] != channels:
        img = np.repeat(img, channels, axis=0)
    return img.astype(np.float32)
