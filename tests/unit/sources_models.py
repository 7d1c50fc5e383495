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


class TabularRegressor(nn.Module):
    """A user's tabular regressor: raw features in, the value in the target's units out. The
    scaling constants are buffers, so they travel in the weights file with the layers."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.target_mean: torch.Tensor
        self.target_std: torch.Tensor
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((features - self.mean) / self.std)
        return out * self.target_std + self.target_mean


def tabular_regressor(features: int = 10, hidden: int = 16) -> TabularRegressor:
    """Fits diabetes (10 raw features -> one value)."""
    torch.manual_seed(0)
    return TabularRegressor(features, hidden)


def digits_classifier(hidden: int = 32) -> nn.Module:
    """Fits digits ([N,1,8,8] in [0,1] -> scores for 10 classes)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
