"""The text stage on its own: what in-process callers (the BentoML service passes `str`) and
the batcher's worker thread see. The transports' side is in
tests/integration/test_text_serving*.py."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import InferRequestInvalid
from kiln.serving.messages import TensorSpec
from kiln.serving.tokenization import TextStage
from kiln.serving.validation import RequestValidator
from kiln.text import TextTokenizer

CORPUS = ["a fine film with a sharp script", "dull and far too long", "warm and funny"] * 8


@pytest.fixture(scope="module")
def stage() -> TextStage:
    tokenizer = TextTokenizer.train(CORPUS, vocab_size=120, max_length=6)
    ids = np.dtype(np.int64)
    engine = RequestValidator(
        "reviews:1",
        (
            TensorSpec("input_ids", "INT64", (-1, -1), ids),
            TensorSpec("attention_mask", "INT64", (-1, -1), ids),
        ),
        (TensorSpec("logits", "FP32", (-1, 2), np.dtype(np.float32)),),
        8,
    )
    return TextStage("reviews:1", tokenizer, engine, max_batch_size=8, max_text_bytes=32)


def _texts(*elements: object) -> dict[str, np.ndarray]:
    array = np.empty(len(elements), dtype=object)
    array[:] = list(elements)
    return {"text": array}


def test_str_and_bytes_elements_are_both_strings(stage: TextStage) -> None:
    assert stage.check(_texts("a fine film", b"dull"), ()) == 2


@pytest.mark.parametrize(
    ("element", "says"),
    [
        ("caf\ud800", "element 0 of 'text' is not valid Unicode (it holds a lone surrogate)"),
        ("é" * 17, "has 34 bytes, more than the limit of 32 bytes per string"),
        (b"\xff", "element 0 of 'text' is not valid UTF-8 (byte 0"),
        (3, "element 0 of 'text' is not a string"),
    ],
)
def test_bad_elements_are_refused(stage: TextStage, element: object, says: str) -> None:
    with pytest.raises(InferRequestInvalid, match=r"^model reviews:1: ") as err:
        stage.check(_texts(element), ())
    assert says in err.value.message


def test_unknown_outputs_are_refused_for_strings_too(stage: TextStage) -> None:
    with pytest.raises(InferRequestInvalid, match="unknown output 'probs'"):
        stage.check(_texts("a fine film"), ("probs",))


def test_a_batch_is_tokenised_once_padded_to_its_longest(stage: TextStage) -> None:
    seen: list[dict[str, np.ndarray]] = []

    def engine(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(feed)
        return {"logits": np.zeros((len(feed["input_ids"]), 2), np.float32)}

    texts = ["warm", "a fine film with a sharp script and more", "dull"]
    outputs, stats = stage.split(stage.wrap(engine)(_texts(*texts)))
    assert list(outputs) == ["logits"]
    assert len(seen) == 1
    assert seen[0]["input_ids"].shape == (3, 6)  # the longest, cut to max_length 6
    encoded = stage.tokenizer.encode(texts)
    np.testing.assert_array_equal(seen[0]["input_ids"], encoded.input_ids)
    assert stats.tokens.tolist() == encoded.lengths.tolist()
    assert stats.truncated.tolist() == [False, True, False]


def test_pre_tokenised_rows_are_counted_from_the_mask(stage: TextStage) -> None:
    unk = stage.tokenizer.unk_id
    feed = {
        "input_ids": np.array([[5, unk, 0], [unk, 0, 0]], np.int64),
        "attention_mask": np.array([[1, 1, 0], [0, 0, 0]], np.int64),
    }
    run = stage.wrap(lambda f: {"logits": np.zeros((2, 2), np.float32)})
    _, stats = stage.split(run(feed))
    assert stats.tokens.tolist() == [2, 0]
    assert stats.unknown.tolist() == [1, 0]  # the masked-out unk of row 2 is padding
    assert not stats.truncated.any()
