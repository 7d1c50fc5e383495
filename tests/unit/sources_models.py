"""Plain PyTorch models the `kiln register` tests build, as a user's own code would: builders
importable as `tests.unit.sources_models:NAME` (what `--module` takes)."""

from __future__ import annotations

import torch
from torch import nn


class TwoTower(nn.Module):
    """features FP32 [N,10] + ids INT64 [N,4] -> a score [N,1] and an embedding sum [N,dim]."""

    def __init__(self, features: int = 10, vocab: int = 20, dim: int = 3) -> None:
        super().__init__()
        self.dense = nn.Linear(features, 1)
        self.embedding = nn.Embedding(vocab, dim)

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = self.embedding(ids).sum(dim=1)
        return self.dense(features) + pooled.sum(dim=1, keepdim=True), pooled


def two_tower(features: int = 10, vocab: int = 20, dim: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return TwoTower(features, vocab, dim)


def not_a_module(**_: object) -> str:
    return "a string, not a module"


class SequenceClassifier(nn.Module):
    """tokens INT64 [N,T] (any length T) -> class scores [N,3]."""

    def __init__(self, vocab: int = 30) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embedding(tokens).mean(dim=1))
        return out


def regressor(features: int = 10) -> nn.Module:
    """An MLP with one output value per row: a regressor's shape."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 1))
