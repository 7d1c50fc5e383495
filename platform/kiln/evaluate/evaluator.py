"""What the evaluation gates share: their thresholds, and the `Evaluator` that runs versions'
engines on held-out data and on labelled traffic, once each per promotion."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.data import load_recorded, sample_digests
from kiln.errors import FailedPrecondition, InvalidArgument, KilnError, TrafficNotFound
from kiln.evaluate.labelled import DEFAULT_HOLDOUT, LabelledTraffic, holdout_mask, labelled_traffic
from kiln.evaluate.references import tokenizer_file
from kiln.registry import ModelVersion, Registry
from kiln.registry.loader import open_engine
from kiln.settings import Settings
from kiln.text import TextTokenizer
from kiln.traffic import Window, log_store
from kiln_engines import EngineError, EngineOptions

# Either kind of failure means "could not evaluate": a Kiln error (no engine, data set gone,
# unreadable traffic) or an engine error (inputs of another shape, a backend missing here).
EVALUATION_ERRORS = (KilnError, EngineError)


@dataclass(frozen=True)
class GateThresholds:
    """Where the evaluation gates draw their lines (`kiln promote` options set them)."""

    min_traffic_gain: float = 0.0
    """Candidate minus current accuracy on held-out labelled traffic, at least this. For a
    regression model the gain is relative: the candidate's RMSE must be below the current
    version's by at least this fraction of it ((current - candidate) / current)."""
    max_heldout_regression: float = 0.01
    """Current minus candidate accuracy on the held-out test split, at most this."""
    max_heldout_rmse_increase: float = 0.02
    """For a regression model: the candidate's RMSE on the held-out test split may exceed
    the current version's by at most this fraction of it (0.02: 2% higher)."""
    latency_budget: float = 1.5
    """Candidate batch-1 p50 latency at most this many times the current version's."""
    min_traffic_samples: int = 20
    """Fewer labelled held-out requests than this cannot show a gain: the traffic gate then
    passes only when no gain is required (`min_traffic_gain` <= 0)."""
    traffic_window: str = "24h"
    """How far back labelled traffic is read: 30m, 24h, 7d or an ISO time."""
    holdout_fraction: float = DEFAULT_HOLDOUT
    """The share of labelled requests retraining keeps out; must match retraining's."""

    def validate(self) -> None:
        """Raise `InvalidArgument` for a threshold that cannot be meant."""
        for name in ("min_traffic_gain", "max_heldout_regression"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -1 <= value <= 1):
                raise InvalidArgument(
                    f"{name.replace('_', '-')} is an accuracy difference in [-1, 1], got {value}"
                )
        if not (
            math.isfinite(self.max_heldout_rmse_increase) and self.max_heldout_rmse_increase >= 0
        ):
            raise InvalidArgument(
                "max-heldout-rmse-increase is a fraction of the current version's held-out "
                f"RMSE, >= 0 (e.g. 0.02 for 2%), got {self.max_heldout_rmse_increase}"
            )
        if not (math.isfinite(self.latency_budget) and self.latency_budget > 0):
            raise InvalidArgument(
                f"latency budget is a factor of the current version's latency (e.g. 1.5), "
                f"got {self.latency_budget}"
            )
        if self.min_traffic_samples < 1:
            raise InvalidArgument(
                f"min_traffic_samples must be at least 1, got {self.min_traffic_samples}"
            )
        if not 0 < self.holdout_fraction < 1:
            raise InvalidArgument(
                f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}"
            )
        Window.last(self.traffic_window)  # InvalidArgument for a window that does not parse


@dataclass(frozen=True)
class HeldOut:
    """A data set's test split, as the gates judge on it."""

    x: np.ndarray
    y: np.ndarray
    dataset: str
    split: dict[str, Any]


@dataclass
class Evaluator:
    """Runs versions on the evaluation data, once each, shared by the gates of one promotion
    (`Registry.promote` may run its gates more than once when the alias moves meanwhile)."""

    registry: Registry
    settings: Settings
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    _predictions: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)
    _held_out: dict[str, HeldOut] = field(default_factory=dict)
    _traffic_by_model: dict[tuple[str, str | None, bool], LabelledTraffic] = field(
        default_factory=dict
    )
    _values: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)
    _tokenizers: dict[tuple[str, int], TextTokenizer] = field(default_factory=dict)

    def predict(self, version: ModelVersion, x: np.ndarray, data: str) -> np.ndarray:
        """Top-1 classes of `version` on `x`; `data` names `x` for the cache."""
        key = (version.name, version.version, data)
        if key not in self._predictions:
            parts = self._run(version, x, lambda out: out.argmax(axis=1))
            self._predictions[key] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._predictions[key]

    def values(self, version: ModelVersion, x: np.ndarray, data: str) -> np.ndarray:
        """Predicted values (float64, one per sample: the first of each output row) of the
        regression `version` on `x`; `data` names `x` for the cache."""
        key = (version.name, version.version, data)
        if key not in self._values:
            parts = self._run(
                version, x, lambda out: np.asarray(out, np.float64).reshape(len(out), -1)[:, 0]
            )
            self._values[key] = np.concatenate(parts) if parts else np.zeros(0, np.float64)
        return self._values[key]

    def _run(
        self, version: ModelVersion, x: np.ndarray, keep: Callable[[np.ndarray], np.ndarray]
    ) -> list[np.ndarray]:
        """`keep` of `version`'s first output on `x`, batch by batch (at most the engine's
        maximum batch, else 256 rows at a time). A text version's `x` are strings: each batch
        is tokenised with the version's own tokenizer, as serving does."""
        tokenizer = self.tokenizer(version) if version.config.get("text") else None
        engine, _ = open_engine(
            self.registry, version.name, version.version, EngineOptions(intra_op_threads=0)
        )
        try:
            name = engine.signature.inputs[0].name
            output = engine.signature.outputs[0].name
            step = engine.signature.max_batch or 256

            def inputs(batch: np.ndarray) -> dict[str, np.ndarray]:
                if tokenizer is None:
                    return {name: batch}
                return tokenizer.encode([str(t) for t in batch]).inputs()

            return [
                keep(engine.infer(inputs(x[i : i + step]))[output]) for i in range(0, len(x), step)
            ]
        finally:
            engine.close()

    def tokenizer(self, version: ModelVersion) -> TextTokenizer:
        """A text version's tokenizer (its registry artifact, verified), read once."""
        key = (version.name, version.version)
        if key not in self._tokenizers:
            path = tokenizer_file(self.registry, version.name, version.version, version.config)
            self._tokenizers[key] = TextTokenizer.from_file(path)
        return self._tokenizers[key]

    def held_out(self, version: ModelVersion) -> HeldOut:
        """The test split of the data set `version` was trained on (same split settings)."""
        config = version.config
        name = config.get("dataset")
        if not name:
            raise FailedPrecondition(f"{version.ref} records no data set to evaluate it on")
        split = dict(config.get("split") or {})
        cache = f"{name}:{sorted(split.items())}:{config.get('seed', 0)}"
        if cache not in self._held_out:
            seed = int(config.get("seed", 0))
            dataset = load_recorded(str(name), split, self.settings, seed=seed)
            self._held_out[cache] = HeldOut(dataset.test.x, dataset.test.y, str(name), split)
        return self._held_out[cache]

    def traffic(self, name: str, task: str | None = None, *, text: bool = False) -> LabelledTraffic:
        """Held-out labelled requests of `name` in the window (with true values when `task`
        is "regression"; a text model's logged strings when `text`); none when it logged no
        traffic.

        Other errors (unreadable files) propagate: the traffic gate reports them.
        """
        key = (name, task, text)
        if key not in self._traffic_by_model:
            try:
                rows = labelled_traffic(
                    log_store(self.settings),
                    name,
                    Window.last(self.thresholds.traffic_window),
                    task=task,
                    text=text,
                )
            except TrafficNotFound:
                rows = labelled_traffic_empty()
            mask = unseen_holdout_mask(rows, self.thresholds.holdout_fraction)
            self._traffic_by_model[key] = rows.subset(mask)
        return self._traffic_by_model[key]


def labelled_traffic_empty() -> LabelledTraffic:
    empty = np.zeros((0,), dtype=np.int64)
    return LabelledTraffic(np.zeros((0,), np.float32), empty, [], empty, empty, empty)


def unseen_holdout_mask(rows: LabelledTraffic, fraction: float) -> np.ndarray:
    """`holdout_mask`, minus held-out requests whose input also came in a request retraining
    could learn from (clients resend the same image; held out by id, seen by content)."""
    held = holdout_mask(rows.request_ids, fraction)
    if not held.any() or held.all():
        return held
    keys = sample_digests(rows.x)
    trained = {k for k, h in zip(keys, held, strict=True) if not h}
    unseen = np.fromiter((k not in trained for k in keys), dtype=bool, count=len(keys))
    mask: np.ndarray = held & unseen
    return mask
