"""Labelled production traffic as arrays: the logged inputs joined with their feedback
(labels for a classification model, true values for a regression model).

Retraining learns from it and the promotion gates judge candidates on it, so both must agree
on which rows are held out: `holdout_mask` decides by a hash of the request id, the same
answer in every process and on every day.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kiln.data.dataset import text_array
from kiln.traffic import (
    STATUS_OK,
    LogRoot,
    Route,
    Window,
    latest_labels,
    latest_values,
    run_query,
    scan_feedback,
    scan_traffic,
)
from kiln.traffic.labels import REGRESSION
from kiln.traffic.validity import input_problem, label_in_range, output_width, value_is_finite

log = logging.getLogger("kiln.evaluate")

DEFAULT_HOLDOUT = 0.25
"""Share of labelled traffic kept out of retraining, for the gates."""


@dataclass(frozen=True)
class LabelledTraffic:
    """One-sample requests that were answered, logged with their input, and labelled."""

    x: np.ndarray
    """Inputs, (n, *sample_shape), float32; a text model's: its strings, a 1-D object array."""
    y: np.ndarray
    """True labels, (n,), int64; for a regression model true values, (n,), float64."""
    request_ids: list[str]
    versions: np.ndarray
    """The version that answered each request."""
    predictions: np.ndarray
    """What that version answered."""
    timestamps_us: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    """Labelled answered requests with a logged input that were left out, by reason:
    `missing`, `inconsistent`, `empty`, `non_finite` (see `kiln.traffic.validity`),
    `not_one_sample`, `label_out_of_range` (not a class of the model), `value_not_finite`
    (a regression model's), `other_shape` (a sample shape other than the most common one:
    another model's era)."""

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: np.ndarray) -> LabelledTraffic:
        ids = [r for r, keep in zip(self.request_ids, mask, strict=True) if keep]
        return LabelledTraffic(
            self.x[mask], self.y[mask], ids, self.versions[mask], self.predictions[mask],
            self.timestamps_us[mask], self.skipped,
        )  # fmt: skip


def holdout_mask(request_ids: list[str], fraction: float = DEFAULT_HOLDOUT) -> np.ndarray:
    """True for the requests kept out of training: a fixed hash of the id, below `fraction`."""
    cut = int(fraction * 2**32)
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(r.encode()).digest()[:4], "big") < cut for r in request_ids),
        dtype=bool,
        count=len(request_ids),
    )


def labelled_traffic(
    home: LogRoot,
    model: str,
    window: Window | None = None,
    *,
    num_classes: int | None = None,
    sample_shape: Sequence[int] | None = None,
    task: str | None = None,
    text: bool = False,
) -> LabelledTraffic:
    """Primary and canary requests of `model` in `window` that carry an input and a label
    (a true value when `task` is "regression": then `y` holds the values and no class
    bound applies, a value must be finite). With `text`, the input is a text model's logged
    string (`texts`, one per request; `sample_shape` does not apply) and `x` holds them.

    Shadow answers are left out: they repeat a primary request. When a request id was labelled
    twice, the last label wins; when an input was sent twice, each labelled request counts.
    A label must be a class of the model: below `num_classes` when given, else below the
    width of the answer the request got. An input must be one sample of `sample_shape` when
    given, else of the shape most inputs have. Rows that cannot be used are left out and
    counted in `skipped` (never an error): one odd row must not stop retraining.
    """
    traffic = scan_traffic(home, model, window)
    feedback = scan_feedback(home)
    classes = pl.lit(num_classes) if num_classes is not None else pl.col("outputs")
    regression = task == REGRESSION
    # The truth is called `label` below either way: one query serves both tasks.
    truth_problem = (
        pl.when(~value_is_finite("label")).then(pl.lit("value_not_finite"))
        if regression
        else pl.when(~label_in_range(classes)).then(pl.lit("label_out_of_range"))
    )

    logged = (
        pl.col("texts").is_not_null()
        if text
        else pl.col("input").is_not_null() | pl.col("input_shape").is_not_null()
    )
    # A text request holds one sample when it holds one string; it has no input shape.
    one_sample = (
        pl.col("texts").list.len() == 1 if text else pl.col("input_shape").list.first() == 1
    )
    input_checked = pl.lit(None, pl.String) if text else input_problem()

    def query() -> pl.DataFrame:
        rows = (
            traffic.frame.filter(
                (pl.col("status") == STATUS_OK) & (pl.col("route") != Route.SHADOW.value) & logged
            )
            .select(
                "request_id",
                "timestamp",
                "version",
                "prediction",
                "input",
                "input_shape",
                "texts",
                output_width().alias("outputs"),
            )
            .unique(subset="request_id", keep="last")
        )
        labels = (
            latest_values(feedback.frame, model).select(
                "request_id", pl.col("value").alias("label")
            )
            if regression
            else latest_labels(feedback.frame, model).select("request_id", "label")
        )
        return (
            rows.join(labels, on="request_id", how="inner")
            .with_columns(
                pl.coalesce(
                    input_checked,
                    pl.when((~one_sample).fill_null(True)).then(pl.lit("not_one_sample")),
                    truth_problem,
                ).alias("problem")
            )
            .sort("timestamp")
            .collect()
        )

    frame = run_query(query, traffic, feedback)
    usable = frame.filter(pl.col("problem").is_null()).with_columns(
        pl.col("input_shape").list.slice(1).alias("sample")
    )
    skipped = dict(frame.filter(pl.col("problem").is_not_null())["problem"].value_counts().rows())
    if usable.height and not text:
        # Inputs of another sample shape than the model's (than most, when not told): another
        # model's era, or a client's mistake; leave them out.
        if sample_shape is not None:
            sample = [int(d) for d in sample_shape]
        else:
            shapes = usable.group_by("sample").agg(pl.len(), pl.col("timestamp").max())
            sample = shapes.sort("len", "timestamp", descending=True)["sample"][0].to_list()
        same = pl.col("sample") == pl.lit(pl.Series([sample], dtype=pl.List(pl.Int64)))
        other = usable.filter(~same).height
        if other:
            skipped["other_shape"] = other
            usable = usable.filter(same)
    if skipped:
        log.warning(
            "labelled traffic of '%s': left out %s",
            model,
            ", ".join(f"{n} ({why})" for why, n in sorted(skipped.items())),
        )
    if usable.height == 0:
        empty = np.zeros((0,), dtype=np.int64)
        none = text_array([]) if text else np.zeros((0, *(sample_shape or ())), np.float32)
        y = np.zeros((0,), dtype=np.float64) if regression else empty
        return LabelledTraffic(none, y, [], empty, empty, empty, skipped)
    if text:
        x = text_array([str(t) for t in usable["texts"].list.first().to_list()])
    else:
        flat = usable["input"].explode().to_numpy().astype(np.float32, copy=False)
        x = flat.reshape(usable.height, *sample)
    return LabelledTraffic(
        x=x,
        y=usable["label"].to_numpy().astype(np.float64 if regression else np.int64),
        request_ids=usable["request_id"].to_list(),
        versions=usable["version"].fill_null(-1).to_numpy().astype(np.int64),
        predictions=usable["prediction"].fill_null(-1).to_numpy().astype(np.int64),
        timestamps_us=usable["timestamp"].dt.epoch("us").to_numpy().astype(np.int64),
        skipped=skipped,
    )
