"""Labelled production traffic as arrays: the logged inputs joined with their feedback.

Retraining learns from it and the promotion gates judge candidates on it, so both must agree
on which rows are held out: `holdout_mask` decides by a hash of the request id, the same
answer in every process and on every day.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from kiln.traffic import (
    STATUS_OK,
    Route,
    Window,
    latest_labels,
    run_query,
    scan_feedback,
    scan_traffic,
)

DEFAULT_HOLDOUT = 0.25
"""Share of labelled traffic kept out of retraining, for the gates."""


@dataclass(frozen=True)
class LabelledTraffic:
    """One-sample requests that were answered, logged with their input, and labelled."""

    x: np.ndarray
    """Inputs, (n, *sample_shape), float32."""
    y: np.ndarray
    """True labels, (n,), int64."""
    request_ids: list[str]
    versions: np.ndarray
    """The version that answered each request."""
    predictions: np.ndarray
    """What that version answered."""
    timestamps_us: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: np.ndarray) -> LabelledTraffic:
        ids = [r for r, keep in zip(self.request_ids, mask, strict=True) if keep]
        return LabelledTraffic(
            self.x[mask], self.y[mask], ids, self.versions[mask], self.predictions[mask],
            self.timestamps_us[mask],
        )  # fmt: skip


def holdout_mask(request_ids: list[str], fraction: float = DEFAULT_HOLDOUT) -> np.ndarray:
    """True for the requests kept out of training: a fixed hash of the id, below `fraction`."""
    cut = int(fraction * 2**32)
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(r.encode()).digest()[:4], "big") < cut for r in request_ids),
        dtype=bool,
        count=len(request_ids),
    )


def labelled_traffic(home: Path, model: str, window: Window | None = None) -> LabelledTraffic:
    """Primary and canary requests of `model` in `window` that carry an input and a label.

    Shadow answers are left out: they repeat a primary request. When a request id was labelled
    twice, the last label wins; when an input was sent twice, each labelled request counts.
    """
    traffic = scan_traffic(home, model, window)
    feedback = scan_feedback(home)

    def query() -> pl.DataFrame:
        rows = (
            traffic.frame.filter(
                (pl.col("status") == STATUS_OK)
                & pl.col("input").is_not_null()
                & (pl.col("route") != Route.SHADOW.value)
                & (pl.col("input_shape").list.first() == 1)
            )
            .select("request_id", "timestamp", "version", "prediction", "input", "input_shape")
            .unique(subset="request_id", keep="last")
        )
        labels = latest_labels(feedback.frame, model).select("request_id", "label")
        return rows.join(labels, on="request_id", how="inner").sort("timestamp").collect()

    frame = run_query(query, traffic, feedback)
    if frame.height == 0:
        empty = np.zeros((0,), dtype=np.int64)
        return LabelledTraffic(np.zeros((0,), np.float32), empty, [], empty, empty, empty)
    shapes = frame["input_shape"].to_list()
    sample = tuple(int(d) for d in shapes[0][1:])
    keep = np.array([tuple(s[1:]) == sample for s in shapes], dtype=bool)
    if not keep.all():  # inputs of another shape: another model's era; leave them out
        frame = frame.filter(pl.Series(keep))
    flat = np.asarray(frame["input"].to_list(), dtype=np.float32)
    return LabelledTraffic(
        x=flat.reshape(-1, *sample),
        y=frame["label"].to_numpy().astype(np.int64),
        request_ids=frame["request_id"].to_list(),
        versions=frame["version"].to_numpy().astype(np.int64),
        predictions=frame["prediction"].fill_null(-1).to_numpy().astype(np.int64),
        timestamps_us=frame["timestamp"].dt.epoch("us").to_numpy().astype(np.int64),
    )
