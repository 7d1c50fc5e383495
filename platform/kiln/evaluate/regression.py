"""Online evaluation of regression models: served predictions joined with true values.

A regressor's answer to a one-sample request is the first value of its logged output
(`scores[0]`, contract of the traffic log: `prediction` and `confidence` are argmax figures
that mean nothing for a regressor); its feedback is a `value`. Per version and route this
gives the count, MAE and RMSE; per version the residuals (predicted minus true): their mean
(the bias) and the median and 90th percentile of their size; and RMSE over time.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import polars as pl

from kiln.evaluate.groups import coverage, scored_groups
from kiln.evaluate.results import ErrorPoint, GroupError, Residuals, VersionErrors
from kiln.traffic import STATUS_OK, Scan, latest_values
from kiln.traffic.stats import Bucket
from kiln.traffic.validity import value_is_finite


def one_sample_value() -> pl.Expr:
    """The predicted value of an answered one-sample request (null otherwise): the first
    value of its output, whose leading dimension is 1 (a (1,) or (1, 1) output)."""
    one = (pl.col("status") == STATUS_OK) & (pl.col("output_shape").list.first() == 1)
    return pl.when(one.fill_null(False)).then(pl.col("scores").list.first())


def join_values(
    traffic: Scan, feedback: Scan, model: str, regressors: Collection[int]
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(answered one-sample requests of the `regressors` versions with a true value, as
    request_id, timestamp, version, route, predicted, value; the ids of values that match no
    logged request; how many values are no finite number).

    As for labels, the values are the small side: held in memory, the traffic streams past
    them through an `is_in` filter pushed into the scan."""
    values = latest_values(feedback.frame, model).select("request_id", "value")
    every = values.collect(engine="streaming")
    finite = every.filter(value_is_finite())
    ids = finite["request_id"].implode()
    hits = (
        traffic.frame.filter(pl.col("request_id").is_in(ids))
        .select(
            "request_id",
            "timestamp",
            "version",
            "route",
            one_sample_value().cast(pl.Float64).alias("predicted"),
        )
        .collect(engine="streaming")
    )
    valued = hits.filter(
        pl.col("version").is_in(list(regressors)) & pl.col("predicted").is_finite().fill_null(False)
    ).join(finite, on="request_id", how="inner")
    unmatched = finite.select("request_id").join(
        hits.select("request_id"), on="request_id", how="anti"
    )
    return valued, unmatched, every.height - finite.height


_RESIDUAL = pl.col("predicted") - pl.col("value")
_LABELLED = pl.len().alias("labelled")
_MAE = _RESIDUAL.abs().mean().alias("mae")
_RMSE = _RESIDUAL.pow(2).mean().sqrt().alias("rmse")


def errors_by_group(counts: pl.DataFrame, valued: pl.DataFrame) -> list[GroupError]:
    """Per version and route of `counts` (requests, answered per group): labelled requests,
    MAE, RMSE and label coverage."""
    return [
        GroupError(
            version=r["version"],
            route=r["route"],
            requests=r["requests"],
            answered=r["answered"],
            labelled=n,
            mae=r["mae"] if n else None,
            rmse=r["rmse"] if n else None,
            label_coverage=coverage(n, r["answered"]),
        )
        for r, n in scored_groups(counts, valued, _MAE, _RMSE)
    ]


def version_errors(version: int, rows: pl.DataFrame, reference_rmse: float | None) -> VersionErrors:
    """MAE, RMSE and residual summary of one version's labelled requests."""
    residual = (rows["predicted"] - rows["value"]).to_numpy().astype(np.float64)
    if residual.size == 0:
        return VersionErrors(version, 0, None, None, None, reference_rmse)
    size = np.abs(residual)
    p50, p90 = np.quantile(size, [0.5, 0.9]).tolist()
    return VersionErrors(
        version=version,
        labelled=int(residual.size),
        mae=float(size.mean()),
        rmse=float(np.sqrt(np.mean(residual**2))),
        residuals=Residuals(
            mean=float(residual.mean()),
            abs_p50=float(p50),
            abs_p90=float(p90),
            abs_max=float(size.max()),
        ),
        reference_rmse=reference_rmse,
    )


def error_over_time(valued: pl.DataFrame, bucket: Bucket) -> list[ErrorPoint]:
    series = (
        valued.group_by(pl.col("timestamp").dt.truncate(bucket.every).alias("start"), "version")
        .agg(_LABELLED, _RMSE)
        .sort("start", "version")
    )
    return [ErrorPoint(**row) for row in series.iter_rows(named=True)]
