"""The traffic and feedback schemas, defined once; every writer and reader uses these.

A traffic row is one served request. Its file lives at
``traffic/model=NAME/date=YYYY-MM-DD/part-*.parquet`` and carries the `model` column itself
too, so a file copied out of the tree still says what it is. Feedback rows live at
``feedback/date=YYYY-MM-DD/part-*.parquet``, keyed by request id.
"""

from __future__ import annotations

from enum import StrEnum

import polars as pl


class Route(StrEnum):
    """How a request reached the version that answered it."""

    PRIMARY = "primary"
    """The version the model serves by default (or the one the client asked for)."""
    CANARY = "canary"
    """A second version that takes a share of traffic; its answers are returned."""
    SHADOW = "shadow"
    """A second version that sees a copy of traffic; its answers are logged, not returned."""


class Transport(StrEnum):
    GRPC = "grpc"
    HTTP = "http"


STATUS_OK = "ok"
"""`status` of a request that was answered; failures carry their `ErrorCode` value instead."""

TRAFFIC_SCHEMA_V1 = pl.Schema(
    {
        "request_id": pl.String(),
        "timestamp": pl.Datetime("us", "UTC"),  # when the request was received
        "model": pl.String(),
        "version": pl.Int64(),  # null when the request named no served model
        "route": pl.String(),  # a `Route`
        "transport": pl.String(),  # a `Transport`
        "input": pl.List(pl.Float32()),  # the input tensor, flattened; null when not logged
        "input_shape": pl.List(pl.Int64()),
        "output_shape": pl.List(pl.Int64()),
        "scores": pl.List(pl.Float32()),  # the output tensor (logits or probabilities), flattened
        "prediction": pl.Int64(),  # argmax of the scores for one-sample requests, else null
        "confidence": pl.Float32(),  # the predicted class's probability (softmax of logits)
        "latency_us": pl.Int64(),  # receipt to response
        "queue_us": pl.Int64(),  # time in the model's queue; null when it never got there
        "batch_size": pl.Int64(),  # rows in the batch the request ran in
        "status": pl.String(),  # STATUS_OK or the error code the client received
        "error": pl.String(),  # the error message the client received; null on success
    }
)
"""The traffic columns before text models: files of older writers have exactly these; readers
take them as rows whose text columns are null (as any model's but a text model's are)."""

TRAFFIC_SCHEMA = pl.Schema(
    {
        **TRAFFIC_SCHEMA_V1,
        # Text models only; null for other models:
        "texts": pl.List(pl.String()),  # the request's strings; null when not logged
        "text_tokens": pl.List(pl.Int32()),  # tokens per string after truncation
        "text_unknown": pl.List(pl.Int32()),  # unknown tokens per string
    }
)
TEXT_COLUMNS = ("texts", "text_tokens", "text_unknown")
"""The traffic columns of text requests. `texts` is kept or dropped with the numeric input (the
input sample rate); the token counts are always logged for a text model, one entry per string
of the request (pre-tokenised requests too: from their masks)."""

FEEDBACK_SCHEMA_V1 = pl.Schema(
    {
        "request_id": pl.String(),
        "label": pl.Int64(),  # the true class index
        "received_at": pl.Datetime("us", "UTC"),
        "source": pl.String(),  # grpc, http, or file:NAME for `kiln feedback import`
        "model": pl.String(),  # the model the client named; null when it did not say
    }
)
"""The feedback columns before numeric feedback: files of older writers have exactly these
(every row a label); readers take them as rows whose `value` is null."""

FEEDBACK_SCHEMA = pl.Schema(
    {
        "request_id": pl.String(),
        "label": pl.Int64(),  # the true class index (classifiers); null for a value
        "received_at": pl.Datetime("us", "UTC"),
        "source": pl.String(),
        "model": pl.String(),
        "value": pl.Float64(),  # the true target (regressors, finite); null for a label
    }
)
"""Every row carries exactly one of `label` and `value` (`kiln.traffic.labels`)."""

TRAFFIC_REQUIRED = ("request_id", "timestamp", "model", "status")
FEEDBACK_REQUIRED = ("request_id", "label", "received_at")


def schema_problem(found: pl.Schema, expected: pl.Schema, required: tuple[str, ...]) -> str | None:
    """Why a file with schema `found` cannot be read as `expected`, or None when it can.

    Columns in `required` must be present. Other expected columns may be missing (a file from
    an older writer; readers fill them with nulls); extra columns are ignored (a newer writer).
    Every expected column that is present must have exactly the expected type.
    """
    missing = [name for name in required if name not in found]
    if missing:
        return (
            f"not a Kiln file of this kind: no {', '.join(repr(m) for m in missing)} "
            f"column(s) (it has: {', '.join(found) or 'none'})"
        )
    wrong = [
        f"'{name}' is {found[name]}, expected {dtype}"
        for name, dtype in expected.items()
        if name in found and found[name] != dtype
    ]
    if wrong:
        return "columns of the wrong type: " + "; ".join(wrong)
    return None
