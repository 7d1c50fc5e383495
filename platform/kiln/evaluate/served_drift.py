"""Drift of served traffic: each version's logged inputs and answers against its reference.

Input drift looks at a deterministic sample of the logged inputs (at most `sample_size`
requests, evenly spread over the window) so that its cost does not grow with the log;
prediction shares count every answered request. A classifier's answers are judged by class
mix and confidence, a regressor's by the distribution of its predicted values
(`reference["predictions"]["value"]`). A text version (its reference has `text`) is judged by
its texts instead of input features (`kiln.evaluate.served_text`), from the same kind of
sample of its requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from kiln.evaluate.drift import (
    DriftThresholds,
    PredictionDrift,
    ValueDrift,
    input_drift,
    prediction_drift,
    samples_from_inputs,
    value_drift,
)
from kiln.evaluate.regression import one_sample_value
from kiln.evaluate.results import DriftReport, VersionDrift
from kiln.evaluate.served_text import TEXT_ROW_COLUMNS, version_text_drift
from kiln.evaluate.version_info import VersionInfo
from kiln.traffic import Scan
from kiln.traffic.validity import index_below, input_problem


def every(frame: pl.LazyFrame, rows: int, limit: int) -> pl.LazyFrame:
    """About `limit` of `rows` rows, evenly spread: every k-th in file order (part files are
    read in name order, i.e. time order), so the same log gives the same sample."""
    return frame if rows <= limit else frame.gather_every(-(-rows // limit))


def served_drift(
    traffic: Scan,
    counts: pl.DataFrame,
    versions: Mapping[int, VersionInfo],
    t: DriftThresholds,
    sample_size: int,
) -> DriftReport:
    served = sorted(counts["version"].drop_nulls().unique().to_list())
    base = traffic.frame
    predicted = base.filter(pl.col("prediction").is_not_null())  # answered, one sample
    class_counts = predicted.group_by("version", "prediction").agg(pl.len().alias("n"))
    confidences = every(predicted, int(counts["predicted"].sum()), sample_size)
    # Inputs of every request that logged one, answered or not: drift is about what arrives.
    # Beyond the sample size, read every k-th part file only: decoding the input column is
    # the expensive part, and files are spread evenly over time.
    with_input = int(counts["with_input"].sum())
    step = max(1, -(-with_input // sample_size))
    logged = pl.col("input_shape").is_not_null() | pl.col("input").is_not_null()
    inputs = every(
        traffic.build(traffic.files[::step]).filter(logged), with_input // step, sample_size
    )
    class_df = class_counts.collect(engine="streaming")
    conf_df = (
        confidences.select("version", "confidence")
        .filter(pl.col("confidence").is_finite())
        .collect(engine="streaming")
    )
    input_df = inputs.select("version", "input", input_problem().alias("problem")).collect(
        engine="streaming"
    )
    value_df = _served_values(traffic, counts, versions, sample_size)
    text_df = _served_texts(traffic, counts, versions, sample_size)
    results: list[VersionDrift] = []
    for v in served:
        info = versions.get(v)
        reference = info.reference if info else {}
        if info is not None and info.text and reference.get("predictions"):
            text = version_text_drift(text_df.filter(pl.col("version") == v), info, t)
            answers = _prediction_drift(class_df, conf_df, v, info, reference, t)
            drifted = bool(text.drift or answers.drifted)
            results.append(VersionDrift(v, drifted, text=text, predictions=answers))
            continue
        if not reference.get("inputs") or not reference.get("predictions"):
            note = (
                f"version {v} has no reference profile (it was not trained by this Kiln, or "
                "is not in the registry): drift not measured"
            )
            results.append(VersionDrift(v, drift=False, note=note))
            continue
        mine = input_df.filter(pl.col("version") == v)
        problems = mine.filter(pl.col("problem").is_not_null())["problem"].value_counts()
        usable = mine.filter(pl.col("problem").is_null())["input"]
        x, misfit = samples_from_inputs(
            usable.explode().to_numpy(),
            usable.list.len().to_numpy(),
            reference["inputs"]["input_shape"],
        )
        measured = dataclasses.replace(
            input_drift(x, reference["inputs"], t),
            incompatible_inputs=misfit,
            skipped={**dict(problems.iter_rows()), **({"wrong_width": misfit} if misfit else {})},
        )
        predictions: PredictionDrift | ValueDrift
        if info is not None and info.regression:
            values = value_df.filter(pl.col("version") == v)["value"].to_numpy()
            predictions = value_drift(values, reference["predictions"], t)
        else:
            predictions = _prediction_drift(class_df, conf_df, v, info, reference, t)
        drifted = bool(measured.drifted or predictions.drifted)
        results.append(VersionDrift(v, drifted, inputs=measured, predictions=predictions))
    return DriftReport(t, sample_size, results)


def _served_values(
    traffic: Scan, counts: pl.DataFrame, versions: Mapping[int, VersionInfo], sample_size: int
) -> pl.DataFrame:
    """A sample (`sample_size` at most) of the finite values the regression versions among
    `counts` predicted for one-sample requests: version, value. Empty when none served."""
    served = counts["version"].drop_nulls().unique().to_list()
    regressors = [v for v in served if (info := versions.get(v)) is not None and info.regression]
    if not regressors:
        return pl.DataFrame(schema={"version": pl.Int64, "value": pl.Float64})
    mine = pl.col("version").is_in(regressors)
    answered = int(counts.filter(mine)["predicted"].sum())
    values = (
        traffic.frame.filter(mine)
        .select("version", one_sample_value().cast(pl.Float64).alias("value"))
        .filter(pl.col("value").is_finite())
    )
    return every(values, answered, sample_size).collect(engine="streaming")


def _served_texts(
    traffic: Scan, counts: pl.DataFrame, versions: Mapping[int, VersionInfo], sample_size: int
) -> pl.DataFrame:
    """A sample (`sample_size` requests at most, evenly spread) of the text versions' rows
    among `counts` that logged token counts (every request a text version answered)."""
    served = counts["version"].drop_nulls().unique().to_list()
    texts = [v for v in served if (info := versions.get(v)) is not None and info.text]
    if not texts:
        return traffic.frame.select(TEXT_ROW_COLUMNS).clear().collect()
    mine = pl.col("version").is_in(texts)
    rows = int(counts.filter(mine)["requests"].sum())
    frame = traffic.frame.filter(mine & pl.col("text_tokens").is_not_null())
    return every(frame.select(TEXT_ROW_COLUMNS), rows, sample_size).collect(engine="streaming")


def _prediction_drift(
    class_df: pl.DataFrame,
    conf_df: pl.DataFrame,
    version: int,
    info: VersionInfo | None,
    reference: dict[str, Any],
    t: DriftThresholds,
) -> PredictionDrift:
    """Prediction drift of `version`, counting only predictions that are its classes (the
    registry's count, else the reference's): a class index from a damaged row sizes nothing."""
    classes = (info.classes if info else None) or len(reference["predictions"]["class_fractions"])
    mine = class_df.filter(pl.col("version") == version)
    ok = index_below("prediction", pl.lit(classes))
    per_class = np.zeros(classes, dtype=np.int64)
    kept = mine.filter(ok)
    np.add.at(per_class, kept["prediction"].to_numpy(), kept["n"].to_numpy())
    result = prediction_drift(
        per_class.tolist(),
        conf_df.filter(pl.col("version") == version)["confidence"].to_numpy().astype(np.float64),
        reference["predictions"],
        info.class_names if info else [],
        t,
    )
    return dataclasses.replace(result, skipped=int(mine.filter(~ok)["n"].sum()))
