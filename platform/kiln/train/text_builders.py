"""Text model builders: a small transformer encoder, a bidirectional GRU, and fine-tuning of a
pretrained MiniLM encoder (`kiln.train.bert`).

A text builder is `fn(vocab_size, num_classes, *, pad_id, max_length, **args) -> nn.Module`
whose `forward(input_ids, attention_mask)` takes int64 (n, L) tensors and returns float32
logits (n, num_classes). Every built-in one:

- gives a row the same logits whatever padding follows it (attention ignores padded keys,
  pooling averages over real tokens only, the GRU's backward direction reads each row's tokens
  from its own last one);
- gives finite logits for a row whose mask is all zeros (an empty text): pooling divides by at
  least one token, and attention never sees a row of -inf;
- exports with `torch.export` with dynamic batch and sequence axes: no packed sequences, no
  data-dependent shapes, only gathers and masks (and the GRU's recurrence as a `scan`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from kiln.errors import InvalidArgument

TextBuilder = Callable[..., nn.Module]

MASKED = -1e9
"""The attention score of a padded key. Finite, unlike -inf: a row with no real token
(all-zero mask) softmaxes to a uniform average instead of NaN, and exp(MASKED - max) is exactly
0 in float32, so real rows are unchanged by padding."""


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (n, L, d) over the positions where `mask` (n, L) is 1; zeros for a row
    without any (the denominator is clamped to one token)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def drop_tokens(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Word dropout (Iyyer et al., 2015): in training, zero the embeddings (n, L, d) of a random
    `rate` of the tokens, so the model cannot lean on any one word (a few thousand texts are
    otherwise memorised within two epochs); the identity in eval mode and in every export."""
    if not training or rate <= 0:
        return x
    keep = torch.rand(x.shape[:2], device=x.device) >= rate
    return x * keep.unsqueeze(-1).to(x.dtype)


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, 1, 1, L) additive scores: 0 for real keys, MASKED for padding."""
    return ((1 - mask.to(dtype)) * MASKED)[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (q k^T / sqrt(d) + bias, softmax, v): plain
    MatMul/Softmax graphs that every exporter and int8 dynamic quantisation handle."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise InvalidArgument(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = (
            t.reshape(n, length, self.heads, width // self.heads).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) * (width // self.heads) ** -0.5 + bias
        attended = self.drop(scores.softmax(dim=-1)) @ v
        out: torch.Tensor = self.out(attended.transpose(1, 2).reshape(n, length, width))
        return out


class EncoderBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x)) (stable without warm-up tricks)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Linear(mlp_ratio * width, width),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x), bias))
        out: torch.Tensor = x + self.drop(self.mlp(self.norm2(x)))
        return out


class TextTransformer(nn.Module):
    """Token embeddings + learned positions, pre-norm encoder blocks, masked mean pooling, a
    linear head."""

    def __init__(  # noqa: PLR0913 (the builder's arguments, each a --model-arg)
        self,
        vocab_size: int,
        num_classes: int,
        *,
        pad_id: int,
        max_length: int,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.3,
        token_dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.token_dropout = token_dropout
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.positions = nn.Embedding(max_length, width)
        self.blocks = nn.ModuleList(
            EncoderBlock(width, heads, mlp_ratio, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        # Small initial embeddings (as GPT-2/BERT): N(0, 1) ones swamp the residual stream.
        for embedding in (self.tokens, self.positions):
            nn.init.normal_(embedding.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        tokens = drop_tokens(self.tokens(input_ids), self.token_dropout, self.training)
        x = self.drop(tokens + self.positions(positions)[None])
        bias = attention_bias(attention_mask, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        logits: torch.Tensor = self.head(self.drop(masked_mean(self.norm(x), attention_mask)))
        return logits


def gru_steps(gru: nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """The outputs (n, L, hidden) of a one-layer unidirectional batch-first `gru` over `x`.

    Eager, that is the library's fused kernel. Under torch.export it is the same recurrence
    written as a `scan` (one step per position): torch.export unrolls `nn.GRU` over the example's
    length and so cannot keep the sequence axis dynamic, while a scan exports as one loop
    (ONNX `Scan`) over any length. The two agree to float rounding (a unit test checks).
    """
    if not torch.compiler.is_exporting():
        out: torch.Tensor = gru(x)[0]
        return out
    from torch._higher_order_ops.scan import scan

    w_ih, w_hh, b_ih, b_hh = (
        cast(torch.Tensor, getattr(gru, name))
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    )
    # The input half of every gate for every position at once; only the hidden half recurs.
    gates_in = (x @ w_ih.T + b_ih).transpose(0, 1)

    def step(h: torch.Tensor, gate_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reset_in, update_in, new_in = gate_in.chunk(3, dim=-1)
        reset_h, update_h, new_h = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
        reset = torch.sigmoid(reset_in + reset_h)
        update = torch.sigmoid(update_in + update_h)
        candidate = torch.tanh(new_in + reset * new_h)
        h = (1 - update) * candidate + update * h
        return h, h.clone()  # scan's outputs must not alias its carry

    _, outputs = scan(step, x.new_zeros(x.shape[0], gru.hidden_size), gates_in)
    steps: torch.Tensor = outputs.transpose(0, 1)
    return steps


def reverse_within_length(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first `length` positions of `x` (n, L, d), leaving its padding where
    it is. Its own inverse. A gather over indices computed from the mask, so it exports with
    dynamic shapes where packed sequences do not."""
    length = mask.sum(1, keepdim=True)
    positions = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(positions < length, length - 1 - positions, positions)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class TextGRU(nn.Module):
    """Embeddings, bidirectional GRU layers, masked mean + max pooling over the outputs, a
    linear head.

    Each direction is its own unidirectional GRU; the backward one reads every row reversed
    within its length, so it starts at the row's last real token and padding (which trails
    both directions' inputs) never reaches the outputs at real positions.
    """

    def __init__(  # noqa: PLR0913 (the builder's arguments, each a --model-arg)
        self,
        vocab_size: int,
        num_classes: int,
        *,
        pad_id: int,
        max_length: int,
        width: int = 128,
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.3,
        token_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.token_dropout = token_dropout
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        size = width
        for _ in range(layers):
            self.forward_layers.append(nn.GRU(size, hidden, batch_first=True))
            self.backward_layers.append(nn.GRU(size, hidden, batch_first=True))
            size = 2 * hidden
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.drop(drop_tokens(self.tokens(input_ids), self.token_dropout, self.training))
        for fwd, bwd in zip(self.forward_layers, self.backward_layers, strict=True):
            ahead = gru_steps(cast(nn.GRU, fwd), x)
            behind = gru_steps(cast(nn.GRU, bwd), reverse_within_length(x, attention_mask))
            x = self.drop(torch.cat([ahead, reverse_within_length(behind, attention_mask)], -1))
        keep = attention_mask.unsqueeze(-1) > 0
        # Max over real tokens; a row without any pools to zeros, not to MASKED.
        peak = torch.where(keep, x, torch.full_like(x, MASKED)).amax(1)
        peak = torch.where(keep.any(1), peak, torch.zeros_like(peak))
        logits: torch.Tensor = self.head(torch.cat([masked_mean(x, attention_mask), peak], -1))
        return logits


def transformer(
    vocab_size: int, num_classes: int, *, pad_id: int, max_length: int, **args: Any
) -> nn.Module:
    """A pre-norm transformer encoder (width 128, 2 layers, 4 heads, dropout 0.3 and word
    dropout 0.3 by default: measured on rotten-tomatoes, see `TEXT_DEFAULTS`)."""
    return TextTransformer(vocab_size, num_classes, pad_id=pad_id, max_length=max_length, **args)


def gru(
    vocab_size: int, num_classes: int, *, pad_id: int, max_length: int, **args: Any
) -> nn.Module:
    """A bidirectional GRU (width 128, hidden 128, 1 layer, dropout 0.3 and word dropout 0.2
    by default: measured on rotten-tomatoes, see `kiln.train.config.TEXT_DEFAULTS`)."""
    return TextGRU(vocab_size, num_classes, pad_id=pad_id, max_length=max_length, **args)


def minilm(
    vocab_size: int, num_classes: int, *, pad_id: int, max_length: int, **args: Any
) -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 encoder with a new classifier head (`kiln.train.bert`);
    `vocab_size` is the encoder's own."""
    from kiln.train.bert import pretrained_classifier

    return pretrained_classifier(num_classes, max_length=max_length, **args)


TEXT_BUILDERS: dict[str, TextBuilder] = {"transformer": transformer, "gru": gru, "minilm": minilm}
PRETRAINED_BUILDERS = ("minilm",)
"""Builders that bring their own tokenizer (the encoder's): the trainer trains none for them."""
