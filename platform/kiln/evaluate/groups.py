"""Figures per (version, route) group beside the group's request counts: the one join both
the classification and the regression evaluations make."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl


def scored_groups(
    counts: pl.DataFrame, labelled: pl.DataFrame, *figures: pl.Expr
) -> Iterator[tuple[dict[str, Any], int]]:
    """Each group of `counts` (version, route, requests, answered), sorted with null versions
    last, as a row with `figures` computed over its `labelled` rows (null where it has none),
    and its number of labelled rows."""
    scored = labelled.group_by("version", "route").agg(pl.len().alias("labelled"), *figures)
    rows = counts.join(scored, on=["version", "route"], how="left").sort(
        "version", "route", nulls_last=True
    )
    for row in rows.iter_rows(named=True):
        yield row, row["labelled"] or 0


def coverage(labelled: int, answered: int) -> float | None:
    """Share of answered requests that were labelled (None when none were answered)."""
    return labelled / answered if answered else None
