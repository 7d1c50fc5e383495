"""Tiny real text versions for the tests: Kiln's trainer on a small slice of a real text data
set, registered as `kiln train --name` registers one (config `text`, a checkpoint whose header
holds the tokenizer, a `tokenizer` artifact). A run takes a few seconds on one core.

    version = train_text_version(registry, settings)                 # transformer, 2 epochs
    version = train_text_version(registry, settings, builder="gru", tokenizer="wordpiece")
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from kiln.data import Dataset, Split, load_dataset
from kiln.registry import ModelVersion, Registry
from kiln.settings import Settings
from kiln.train import TrainConfig, TrainResult, register_result, train

TINY_ARGS: dict[str, dict[str, Any]] = {
    "transformer": {"width": 32, "layers": 1, "heads": 2, "dropout": 0.0},
    "gru": {"width": 32, "hidden": 32, "dropout": 0.0},
}
"""Builder arguments small enough to train in a second or two on a few hundred texts."""


def subset(ds: Dataset, train_rows: int, val_rows: int, test_rows: int) -> Dataset:
    """The first rows of each of `ds`'s splits (its splits are already shuffled and
    stratified), with a fingerprint of its own: a slice is not the data set it came from. The
    name stays, so retraining reloads the data set by name as it does for any version."""

    def head(split: Split, rows: int) -> Split:
        return Split(split.x[:rows], split.y[:rows])

    sizes = f"{ds.fingerprint}:subset:{train_rows}:{val_rows}:{test_rows}"
    return dataclasses.replace(
        ds,
        train=head(ds.train, train_rows),
        val=head(ds.val, val_rows),
        test=head(ds.test, test_rows),
        fingerprint=hashlib.sha256(sizes.encode()).hexdigest(),
        source=f"{ds.source} (first {train_rows}/{val_rows}/{test_rows} rows)",
    )


def train_text(
    settings: Settings,
    *,
    builder: str = "transformer",
    dataset: str = "rotten-tomatoes",
    train_rows: int = 400,
    val_rows: int = 100,
    test_rows: int = 100,
    epochs: int = 2,
    seed: int = 0,
    tokenizer: str | None = None,
    vocab_size: int = 300,
    max_length: int = 32,
    model_args: dict[str, Any] | None = None,
    threads: int = 1,
) -> TrainResult:
    """Train a tiny `builder` on a slice of `dataset` (no registration)."""
    ds = subset(load_dataset(dataset, settings, seed=seed), train_rows, val_rows, test_rows)
    config = TrainConfig.for_task(
        "classification",
        "text",
        dataset=dataset,
        model=builder,
        model_args=TINY_ARGS.get(builder, {}) if model_args is None else model_args,
        epochs=epochs,
        seed=seed,
        tokenizer=tokenizer,
        vocab_size=None if builder == "minilm" else vocab_size,
        max_length=max_length,
        threads=threads,
    )
    return train(config, settings, dataset=ds, show_progress=False)


def train_text_version(
    registry: Registry,
    settings: Settings,
    *,
    name: str = "reviews",
    alias: str | None = None,
    **options: Any,
) -> ModelVersion:
    """Train a tiny text model (`train_text`'s options) and register it as the next version of
    `name`; point `alias` at it when given."""
    result = train_text(settings, **options)
    version = register_result(registry, name, result)
    if alias is not None:
        registry.promote(version.ref, alias, gates=[], reason="test")
    return version
