"""User text data from real Parquet and CSV files: a `text` and a `label` column make a text
set; every kind of bad text is refused naming its rows (and, in a CSV, its lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from kiln.data import load_dataset, modality_of, task_of
from kiln.errors import DatasetInvalid, DatasetNotFound
from kiln.settings import Settings

WORDS = ("fine", "awful", "great", "dull", "lovely", "bland", "superb", "stale")


def _texts(n: int) -> list[str]:
    return [
        f"review {i}: {WORDS[i % len(WORDS)]} and {WORDS[(i * 3) % len(WORDS)]}" for i in range(n)
    ]


def _load(path: Path) -> Any:
    return load_dataset(str(path), Settings())


def _refused(path: Path) -> str:
    with pytest.raises(DatasetInvalid) as err:
        _load(path)
    return err.value.message


def test_parquet_text_with_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "reviews.parquet"
    labels = ["pos" if i % 3 else "neg" for i in range(60)]
    pl.DataFrame({"text": _texts(60), "label": labels, "stars": range(60)}).write_parquet(path)
    assert modality_of(str(path)) == "text" and task_of(str(path)) == "classification"
    ds = _load(path)
    assert ds.modality == "text" and ds.input_shape == () and ds.class_names == ("neg", "pos")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 6, 6)
    assert ds.train.x.dtype == object and all(isinstance(t, str) for t in ds.train.x)
    by_text = dict(zip(_texts(60), labels, strict=True))
    for text, label in zip(ds.test.x, ds.test.y, strict=True):
        assert ds.class_names[label] == by_text[text]
    assert ds.source == f"parquet: {path}"


def test_csv_text_with_integer_labels_and_texts_that_look_like_numbers(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    texts = [*_texts(38), "42", "3.5"]
    pl.DataFrame({"text": texts, "label": [i % 2 for i in range(40)]}).write_csv(path)
    (tmp_path / "quoted.csv").write_text(
        'text,label\n"one, with a comma",0\n"two\nlines",1\n' + path.read_text().split("\n", 1)[1]
    )
    ds = _load(path)
    assert ds.modality == "text" and ds.class_names == ("0", "1")
    assert sorted([*ds.train.x, *ds.val.x, *ds.test.x]) == sorted(texts)
    quoted = _load(tmp_path / "quoted.csv")
    everything = [*quoted.train.x, *quoted.val.x, *quoted.test.x]
    assert "one, with a comma" in everything and "two\nlines" in everything
    assert modality_of(str(path)) == "text" and task_of(str(path)) == "classification"


def test_same_file_same_fingerprint_other_seed_other(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pl.DataFrame({"text": _texts(50), "label": [i % 2 for i in range(50)]}).write_csv(path)
    first, again = _load(path), _load(path)
    other = load_dataset(str(path), Settings(), seed=1)
    assert first.fingerprint == again.fingerprint and first.fingerprint != other.fingerprint
    assert first.test.x.tolist() == again.test.x.tolist() != other.test.x.tolist()


def test_repeated_texts_kept_once_or_dropped_when_labels_disagree(tmp_path: Path) -> None:
    path = tmp_path / "reviews.parquet"
    texts = [*_texts(30), "same again", "same again", "same again", "torn", "torn"]
    labels = [i % 2 for i in range(30)] + [1, 1, 1, 0, 1]
    pl.DataFrame({"text": texts, "label": labels}).write_parquet(path)
    ds = _load(path)
    everything = [*ds.train.x, *ds.val.x, *ds.test.x]
    assert everything.count("same again") == 1 and "torn" not in everything
    assert len(everything) == 31 and len(set(everything)) == 31
    assert "(4 repeated rows dropped, 1 text(s) with conflicting labels among them)" in ds.source


def test_a_csv_of_numbers_is_still_a_feature_set(tmp_path: Path) -> None:
    path = tmp_path / "features.csv"
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    frame.with_columns(label=pl.Series([i % 2 for i in range(40)])).write_csv(path)
    ds = _load(path)
    assert ds.modality == "tensor" and ds.input_shape == (2,) and ds.train.x.dtype == np.float32
    assert modality_of(str(path)) == "tensor"


def test_no_text_column_names_the_columns_there_are(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pl.DataFrame({"review": _texts(10), "label": [0, 1] * 5}).write_csv(path)
    message = _refused(path)
    assert "has no 'text' column (columns: review, label)" in message
    assert "name the column that holds the texts 'text' (string columns here: review)" in message
    nothing = tmp_path / "labels.parquet"
    pl.DataFrame({"label": [0, 1] * 5}).write_parquet(nothing)
    assert "has no inputs (columns: label): add a 'text' column" in _refused(nothing)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_empty_and_blank_texts_are_named_by_row(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"reviews{suffix}"
    texts = ["fine", "", "good", "   ", "ok", "\t"]
    frame = pl.DataFrame({"text": texts, "label": [0, 1] * 3})
    frame.write_parquet(path) if suffix == ".parquet" else frame.write_csv(path)
    message = _refused(path)
    assert "column 'text' is empty or blank in 3 row(s), first rows [1, 3, 5]" in message
    assert "fill in those texts or drop the rows" in message


def test_null_texts_are_named_by_row(tmp_path: Path) -> None:
    path = tmp_path / "reviews.parquet"
    pl.DataFrame({"text": ["fine", None, "ok", None], "label": [0, 1, 0, 1]}).write_parquet(path)
    assert "column 'text' is missing (null) in 2 row(s), first rows [1, 3]" in _refused(path)


def test_a_text_column_that_is_not_strings(tmp_path: Path) -> None:
    path = tmp_path / "reviews.parquet"
    pl.DataFrame({"text": [1, 2, 3, 4], "label": [0, 1, 0, 1]}).write_parquet(path)
    assert "column 'text' holds Int64, not strings" in _refused(path)
    nested = tmp_path / "nested.parquet"
    pl.DataFrame({"text": [["a"], ["b"]], "label": [0, 1]}).write_parquet(nested)
    assert "column 'text' holds List(String), not strings" in _refused(nested)


def test_binary_texts_must_be_utf8(tmp_path: Path) -> None:
    good = tmp_path / "bytes.parquet"
    pl.DataFrame({"text": [t.encode() for t in _texts(20)], "label": [0, 1] * 10}).write_parquet(
        good
    )
    assert _load(good).train.x[0] in _texts(20)
    bad = tmp_path / "latin1.parquet"
    texts = [b"fine", "caf\xe9".encode("latin-1"), b"ok", b"\xa3 5"]
    pl.DataFrame({"text": texts, "label": [0, 1, 0, 1]}).write_parquet(bad)
    message = _refused(bad)
    assert "column 'text' holds bytes that are not UTF-8 in 2 row(s), first rows [1, 3]" in message


def test_a_csv_that_is_not_utf8_names_lines_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b'text,label\nfine,1\n"caf\xe9 au lait",0\n"two\nlines, \xa3 5",1\nok,0\n')
    message = _refused(path)
    assert f"{path} is not UTF-8: line 3 (row 1): byte 0xe9; line 5 (row 2): byte 0xa3" in message
    assert "iconv -f WINDOWS-1252 -t UTF-8 latin1.csv" in message
    header = tmp_path / "header.csv"
    header.write_bytes(b"t\xe9xt,label\nfine,1\n")
    assert "line 1 (the header): byte 0xe9" in _refused(header)


def test_a_ragged_csv_names_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text('text,label\nfine,1\nnot, quoted,0\n"a\nb",1\nok,0,extra\n')
    message = _refused(path)
    assert "row 1 (line 3) has 3 fields, the header 2" in message
    assert "row 3 (line 6) has 3 fields, the header 2" in message


def test_texts_need_labels_not_targets(tmp_path: Path) -> None:
    target = tmp_path / "scores.parquet"
    pl.DataFrame({"text": _texts(12), "target": [float(i) for i in range(12)]}).write_parquet(
        target
    )
    assert "text data sets are classification here" in _refused(target)
    unlabelled = tmp_path / "unlabelled.csv"
    pl.DataFrame({"text": _texts(8), "label": [0, None, 1, 0, None, 1, 0, 1]}).write_csv(unlabelled)
    assert "has 2 row(s) with a missing label, first rows [1, 4]" in _refused(unlabelled)


def test_a_missing_csv_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match=r"CSV file .*nope\.csv does not exist"):
        _load(tmp_path / "nope.csv")
    with pytest.raises(DatasetNotFound, match="does not exist"):
        task_of("nope.csv")


def test_kiln_datasets_show_and_list_print_the_modality(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pl.DataFrame({"text": _texts(40), "label": [i % 2 for i in range(40)]}).write_csv(path)
    shown = cli("datasets", "show", str(path), "--json")
    assert shown.exit_code == 0, shown.stderr
    summary = shown.json()
    assert summary["modality"] == "text" and summary["input_shape"] == []
    assert summary["words_per_text"] == {"mean": 5.0, "median": 5, "max": 5}
    human = cli("datasets", "show", str(path))
    assert "words per text (train)" in human.stdout and "mean 5.0, median 5" in human.stdout
    bracketed = tmp_path / "bracketed.csv"
    labels = ["[neg]" if i % 2 else "[pos]" for i in range(40)]
    pl.DataFrame({"text": _texts(40), "label": labels}).write_csv(bracketed)
    assert "[neg], [pos]" in cli("datasets", "show", str(bracketed)).stdout  # not rich markup
    assert cli("datasets", "show", "digits", "--json").json()["modality"] == "tensor"
    listing = {d["name"]: d for d in cli("datasets", "list", "--json").json()["datasets"]}
    assert listing["fine-foods"]["modality"] == "text" and listing["fine-foods"]["samples"] == 4948
    assert listing["bbc-news"]["samples"] == 2029 and listing["mnist-5k"]["modality"] == "tensor"
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\ncaf\xe9,0\n")
    refused = cli("datasets", "show", str(bad))
    assert refused.exit_code == 2 and "line 2 (row 0): byte 0xe9" in refused.stderr
