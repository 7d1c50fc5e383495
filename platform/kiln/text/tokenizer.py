"""Tokenizers as versioned artifacts: trained on a training split, or a pretrained encoder's own.

A `TextTokenizer` is a Hugging Face `tokenizers.Tokenizer` plus the settings a model was
trained with (maximum length, padding and unknown-token ids). It serialises to one canonical
JSON document (`to_json`), whose sha256 (`sha256`) is part of a version's lineage: the same
texts, settings and seed give the same bytes, and a different tokenizer is a different version.

Trained tokenizers are BPE or WordPiece over NFKC-normalised, lower-cased, whitespace and
punctuation pre-tokenised text, with `[PAD]` = 0 and `[UNK]` = 1. Both come from the BPE
trainer, which is deterministic (the library's WordPiece trainer, and its BPE trainer with a
`##` prefix, pick different tokens from run to run: measured). A WordPiece vocabulary is the
BPE vocabulary of half the size with each token also as a `##` continuation, in a WordPiece
model (greedy longest match), so it is as deterministic.

Encoding pads each batch to its longest member (at most `max_length` tokens: longer texts are
truncated, and `Encoded.truncated` says which) and returns int64 `input_ids` and
`attention_mask`, the two inputs every Kiln text model takes. No torch here: serving uses it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import InvalidArgument

PAD, UNK = "[PAD]", "[UNK]"
CLS, SEP = "[CLS]", "[SEP]"
KINDS = ("bpe", "wordpiece")
DEFAULT_KIND = "bpe"
DEFAULT_VOCAB_SIZE = 8000
DEFAULT_MAX_LENGTH = 128
MIN_VOCAB_SIZE = 100
MAX_VOCAB_SIZE = 1_000_000
MAX_MAX_LENGTH = 8192

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TEXT_INPUT = "text"
"""The name of the BYTES (UTF-8 strings) input a served text model takes."""

SETTINGS_KEY = "kiln"
"""The key under which `to_json` stores Kiln's settings inside the tokenizer JSON."""


@dataclass(frozen=True)
class Encoded:
    """A batch of texts as model inputs, padded to the longest (at most `max_length`)."""

    input_ids: np.ndarray
    """int64 (n, length); `pad_id` after each text's tokens."""
    attention_mask: np.ndarray
    """int64 (n, length): 1 for a token, 0 for padding."""
    lengths: np.ndarray
    """int64 (n,): tokens per text after truncation (the mask's row sums)."""
    unknown: np.ndarray
    """int64 (n,): how many of those tokens are the unknown token."""
    truncated: np.ndarray
    """bool (n,): texts longer than `max_length` tokens, cut to it."""

    def inputs(self) -> dict[str, np.ndarray]:
        return {INPUT_IDS: self.input_ids, ATTENTION_MASK: self.attention_mask}


class TextTokenizer:
    """A tokenizer and its settings; see the module docstring."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        kind: str = DEFAULT_KIND,
        pretrained: str | None = None,
    ) -> None:
        if not 1 <= max_length <= MAX_MAX_LENGTH:
            raise InvalidArgument(f"max length must be in 1..{MAX_MAX_LENGTH}, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.kind = kind
        self.pretrained = pretrained
        pad = tokenizer.token_to_id(PAD)
        unk = tokenizer.token_to_id(UNK)
        if pad is None or unk is None:
            raise InvalidArgument(
                f"the tokenizer has no {PAD} or {UNK} token; Kiln's text models need both"
            )
        self.pad_id, self.unk_id = int(pad), int(unk)
        # Padding is Kiln's (to the batch's longest, below); truncation is the library's.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        self._sha256: str | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        kind: str = DEFAULT_KIND,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        max_length: int = DEFAULT_MAX_LENGTH,
        min_frequency: int = 2,
    ) -> TextTokenizer:
        """Train a BPE or WordPiece tokenizer on `texts` (deterministic: the same texts in the
        same order and settings give the same `to_json()`)."""
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

        if kind not in KINDS:
            raise InvalidArgument(f"unknown tokenizer kind '{kind}'; kinds: {', '.join(KINDS)}")
        if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            raise InvalidArgument(
                f"vocabulary size must be in {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE}, got {vocab_size}"
            )
        bpe = Tokenizer(models.BPE(unk_token=UNK))
        normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        pre_tokenizer = pre_tokenizers.Whitespace()
        bpe.normalizer = normalizer
        bpe.pre_tokenizer = pre_tokenizer
        specials = [PAD, UNK, CLS, SEP]
        # WordPiece: every BPE token twice, as a word start and as a "##" continuation, so
        # half as many BPE merges give the vocabulary size asked for.
        merges = vocab_size // 2 if kind == "wordpiece" else vocab_size
        trainer = trainers.BpeTrainer(
            vocab_size=max(merges, len(specials) + 1),
            min_frequency=min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
        bpe.train_from_iterator(list(texts), trainer)
        tokenizer = bpe
        if kind == "wordpiece":
            vocab: dict[str, int] = {token: i for i, token in enumerate(specials)}
            for token, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]):
                if token in vocab:
                    continue
                vocab[token] = len(vocab)
                vocab.setdefault(f"##{token}", len(vocab))
            tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK))
            tokenizer.normalizer = normalizer
            tokenizer.pre_tokenizer = pre_tokenizer
        return cls(tokenizer, max_length=max_length, kind=kind)

    @classmethod
    def from_file(cls, path: Path, *, max_length: int | None = None) -> TextTokenizer:
        """Read a tokenizer JSON file: one `to_json` wrote, or a pretrained model's
        `tokenizer.json` (then `max_length` defaults to its own truncation length)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"cannot read tokenizer {path}: {exc}") from exc
        return cls.from_json(text, max_length=max_length, pretrained=str(path))

    @classmethod
    def from_json(
        cls, text: str, *, max_length: int | None = None, pretrained: str | None = None
    ) -> TextTokenizer:
        """The tokenizer `to_json` wrote (its settings come with it), or any tokenizers JSON."""
        from tokenizers import Tokenizer

        try:
            document = json.loads(text)
            settings = document.pop(SETTINGS_KEY, None) if isinstance(document, dict) else None
            tokenizer = Tokenizer.from_str(json.dumps(document))
        except Exception as exc:  # the library raises a bare Exception for bad JSON
            raise InvalidArgument(f"not a tokenizer JSON document: {exc}") from exc
        if isinstance(settings, dict):
            return cls(
                tokenizer,
                max_length=int(max_length or settings.get("max_length", DEFAULT_MAX_LENGTH)),
                kind=str(settings.get("kind", DEFAULT_KIND)),
                pretrained=settings.get("pretrained"),
            )
        own = (document.get("truncation") or {}).get("max_length") if document else None
        return cls(
            tokenizer,
            max_length=int(max_length or own or DEFAULT_MAX_LENGTH),
            kind=str((document.get("model") or {}).get("type", "pretrained")).lower(),
            pretrained=pretrained,
        )

    # -- serialisation --------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What a version's config records about its tokenizer (`config["text"]`)."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "pretrained": self.pretrained,
            "sha256": self.sha256,
        }

    def to_json(self) -> str:
        """Canonical JSON: keys sorted, vocabularies by id, Kiln's settings under "kiln"."""
        document = json.loads(self.tokenizer.to_str())
        model = document.get("model") or {}
        vocab = model.get("vocab")
        if isinstance(vocab, dict):  # BPE and WordPiece: token -> id, in hash order
            model["vocab"] = dict(sorted(vocab.items(), key=lambda item: item[1]))
        document[SETTINGS_KEY] = {
            "kind": self.kind,
            "max_length": self.max_length,
            "pretrained": self.pretrained,
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()
        return self._sha256

    def save(self, path: Path) -> Path:
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], *, pad_to: int | None = None) -> Encoded:
        """Tokenise `texts` into int64 arrays padded to the longest (or to `pad_to`).

        An empty batch gives (0, 1) arrays; an empty text gives one row of padding (its mask
        all zeros: models pool over no tokens as zeros).
        """
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        n = len(encodings)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        width = max(1, int(lengths.max()) if n else 1, pad_to or 0)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        unknown = np.zeros(n, dtype=np.int64)
        truncated = np.zeros(n, dtype=bool)
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
            unknown[row] = tokens.count(self.unk_id)
            truncated[row] = bool(encoding.overflowing)
        return Encoded(ids, mask, lengths, unknown, truncated)

    def tokens(self, text: str) -> list[str]:
        """The tokens of one text (for reports and debugging)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True).tokens)
