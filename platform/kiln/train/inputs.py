"""What a model is fed: a split's inputs as batches of tensors, one tuple per batch.

Tensor data sets feed `(x[idx],)`. Text data sets are tokenised once per split (the
tokenizer is trained on the training split, or is a pretrained encoder's own) and feed
`(input_ids, attention_mask)` cut to the batch's longest row, so a batch of short texts does
not pay for the longest text of the split. Prediction walks the rows in length order (then
puts the logits back in row order), so its batches carry almost no padding either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from kiln.errors import InvalidArgument
from kiln.text import DEFAULT_KIND, DEFAULT_MAX_LENGTH, DEFAULT_VOCAB_SIZE, TextTokenizer
from kiln.train.text_builders import PRETRAINED_BUILDERS

if TYPE_CHECKING:
    from kiln.train.checkpoint import LoadedCheckpoint
    from kiln.train.config import TrainConfig


BUCKET_POOL = 50
"""Batches per length-sorted pool (`TokenInputs.epoch_order`)."""


class Inputs(Protocol):
    """A split's inputs, batched by row indices."""

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model's positional inputs for rows `idx`."""
        ...

    def prediction_order(self) -> torch.Tensor:
        """The order in which prediction visits the rows (a permutation of range(len))."""
        ...

    def epoch_order(
        self, perm: torch.Tensor, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The order of an epoch's training rows, from a random permutation `perm`; training
        takes consecutive `batch_size` slices of it as batches."""
        ...


class TensorInputs:
    """Arrays sliced alike by row: one array (an image or feature model's input) or several."""

    def __init__(self, *arrays: np.ndarray) -> None:
        self.tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[idx] for t in self.tensors)

    def prediction_order(self) -> torch.Tensor:
        return torch.arange(len(self))

    def epoch_order(
        self, perm: torch.Tensor, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        return perm


class TokenInputs:
    """Token ids and attention mask (int64, rows padded to the split's longest), each batch
    cut to its own longest row."""

    def __init__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        self.input_ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        self.attention_mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))
        self.lengths = self.attention_mask.sum(1)

    @classmethod
    def encode(cls, tokenizer: TextTokenizer, texts: Sequence[str] | np.ndarray) -> TokenInputs:
        encoded = tokenizer.encode(list(texts))
        return cls(encoded.input_ids, encoded.attention_mask)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # At least one column: a batch of empty texts is still a (n, 1) batch of padding.
        width = max(1, int(self.lengths[idx].max())) if idx.numel() else 1
        return self.input_ids[idx, :width], self.attention_mask[idx, :width]

    def prediction_order(self) -> torch.Tensor:
        return torch.argsort(self.lengths, stable=True)

    def epoch_order(
        self, perm: torch.Tensor, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Batches of similar lengths in random order: `perm` is cut into pools of
        BUCKET_POOL batches, each pool sorted by length and cut into batches, and the full
        batches shuffled (a last, partial one stays last, so the slices stay batches).

        A random batch of short snippets is as wide as its longest member, on the review
        sets about twice the mean; within a pool the rows are still a random draw, so every
        batch remains a fair sample of the labels."""
        pool = batch_size * BUCKET_POOL
        batches: list[torch.Tensor] = []
        for start in range(0, len(perm), pool):
            part = perm[start : start + pool]
            part = part[torch.argsort(self.lengths[part], stable=True)]
            batches.extend(torch.split(part, batch_size))
        partial = [b for b in batches if len(b) < batch_size]
        full = [b for b in batches if len(b) == batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return torch.cat(shuffled + partial) if batches else perm


def as_inputs(x: np.ndarray | tuple[np.ndarray, ...] | Inputs) -> Inputs:
    """`x` as `Inputs`: an array or a tuple of arrays (sliced alike), or already `Inputs`."""
    if isinstance(x, np.ndarray):
        return TensorInputs(x)
    if isinstance(x, tuple):
        return TensorInputs(*x)
    return x


def text_tokenizer(
    config: TrainConfig, texts: Sequence[str] | np.ndarray, warm_start: LoadedCheckpoint | None
) -> TextTokenizer:
    """The tokenizer a text model trains with: a warm start's own (its weights index its
    vocabulary, so the config's tokenizer settings, which retraining copies from the parent,
    do not apply), a pretrained builder's own, or one trained on `texts` (the training split)
    with the config's settings."""
    if warm_start is not None and warm_start.tokenizer is not None:
        return warm_start.tokenizer
    if config.model in PRETRAINED_BUILDERS:
        if config.tokenizer or config.vocab_size:
            raise InvalidArgument(
                f"the '{config.model}' builder uses its pretrained encoder's own tokenizer; drop "
                "--tokenizer and --vocab-size (--max-length still applies)"
            )
        from kiln.train.bert import pretrained_tokenizer

        return pretrained_tokenizer(max_length=config.max_length)
    return TextTokenizer.train(
        texts,
        kind=config.tokenizer or DEFAULT_KIND,
        vocab_size=config.vocab_size or DEFAULT_VOCAB_SIZE,
        max_length=config.max_length or DEFAULT_MAX_LENGTH,
    )
