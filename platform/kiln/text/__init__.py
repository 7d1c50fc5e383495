"""Text: tokenizers as versioned artifacts, and the input names every Kiln text model takes.

A text model takes `input_ids` and `attention_mask` (int64, batch x tokens) and returns
class scores. Its tokenizer (`TextTokenizer`) is trained on the training split (or is a
pretrained encoder's own), travels with the version, and tokenises strings server-side.
"""

from __future__ import annotations

from kiln.text.tokenizer import (
    ATTENTION_MASK,
    DEFAULT_KIND,
    DEFAULT_MAX_LENGTH,
    DEFAULT_VOCAB_SIZE,
    INPUT_IDS,
    KINDS,
    PAD,
    TEXT_INPUT,
    UNK,
    Encoded,
    TextTokenizer,
)

__all__ = [
    "ATTENTION_MASK",
    "DEFAULT_KIND",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_VOCAB_SIZE",
    "INPUT_IDS",
    "KINDS",
    "PAD",
    "TEXT_INPUT",
    "UNK",
    "Encoded",
    "TextTokenizer",
]
