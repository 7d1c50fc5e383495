"""Which logged rows a reader can use, as Polars expressions.

The writer keeps invariants (an input shape exactly when there are input values, as many
values as the shape says); files from older writers, damaged rows and hand-made files need
not. Readers evaluate these expressions over their scans, count the rows each one rules out,
report the counts and go on: an odd row never fails a reader, and the checks stay vectorised
(a Python loop per row would cost seconds per million rows).
"""

from __future__ import annotations

import polars as pl

from kiln.traffic.labels import MAX_LABEL

MAX_RANK = 32
"""Input tensors of more dimensions than this are not a shape any reader can rebuild."""

MISSING = "missing"
"""An input shape without values (what earlier writers logged for a refused BYTES tensor)."""
INCONSISTENT = "inconsistent"
"""A shape that is not one (negative dimensions, too many) or that does not match the number
of values."""
EMPTY = "empty"
"""Zero values: nothing to measure."""
NON_FINITE = "non_finite"
"""NaN or infinity among the values."""


def input_problem(values: str = "input", shape: str = "input_shape") -> pl.Expr:
    """Why a row's logged input cannot be used as a tensor of its logged shape, or null when
    it can. Rows with neither values nor shape (input not logged) are not a problem: null.

    The shape's product is taken in floating point: dimensions are checked to be whole and
    non-negative, and a product that overflowed 64-bit integers could otherwise wrap around
    to the number of values.
    """
    v, s = pl.col(values), pl.col(shape)
    count = v.list.len()
    declared = s.list.eval(pl.element().cast(pl.Float64).product()).list.first()
    finite = v.list.eval(pl.element().is_finite()).list.all()
    bad_shape = (
        s.is_null()
        | (s.list.len() > MAX_RANK)
        | (s.list.min() < 0).fill_null(False)  # a scalar's shape has no dimensions
        | (declared != count.cast(pl.Float64))
    )
    return (
        pl.when(v.is_null() & s.is_null())
        .then(pl.lit(None, pl.String))
        .when(v.is_null())
        .then(pl.lit(MISSING))
        .when(bad_shape.fill_null(True))
        .then(pl.lit(INCONSISTENT))
        .when(count == 0)
        .then(pl.lit(EMPTY))
        .when(~finite.fill_null(False))
        .then(pl.lit(NON_FINITE))
        .otherwise(pl.lit(None, pl.String))
    )


def label_in_range(classes: pl.Expr | None = None, label: str = "label") -> pl.Expr:
    """`kiln.traffic.labels.label_problem` as an expression: True where `label` is a class
    index, below `classes` (a column or literal) when given. Where `label` or `classes` is
    null the answer is False: a label that cannot be checked is not used."""
    value = pl.col(label)
    ok = (value >= 0) & (value <= MAX_LABEL)
    if classes is not None:
        ok = ok & (value < classes)
    return ok.fill_null(False)


def index_below(column: str, classes: pl.Expr) -> pl.Expr:
    """True where `column` (a predicted class) is an index below `classes`; False where
    either is null."""
    value = pl.col(column)
    return ((value >= 0) & (value < classes)).fill_null(False)


def output_width(shape: str = "output_shape") -> pl.Expr:
    """Classes a one-sample answer had: the last dimension of its output (null when the
    output was not logged or has no dimensions)."""
    width = pl.col(shape).list.last()
    return pl.when(width > 0).then(width).otherwise(pl.lit(None, pl.Int64))


def value_is_finite(value: str = "value") -> pl.Expr:
    """`kiln.traffic.labels.value_problem` as an expression: True where `value` is a finite
    number; False where it is null, NaN or infinite."""
    return pl.col(value).is_finite().fill_null(False)
