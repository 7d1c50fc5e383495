"""One served request as the logger takes it, and the conversion of many into a Polars frame.

A `TrafficRecord` holds references, not copies: the request path builds one in a few hundred
nanoseconds and the writer thread does the numeric work (flattening tensors, argmax, softmax)
for a whole flush at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from kiln.traffic.schema import STATUS_OK, TRAFFIC_SCHEMA, Route, Transport


@dataclass(slots=True)
class TrafficRecord:
    """One request: what came in, what went out, how long it took, how it ended.

    Arrays are kept by reference until the writer thread converts them, so the caller must not
    modify them afterwards (the serving core hands out fresh arrays per request).
    """

    request_id: str
    timestamp_us: int
    """When the request was received: microseconds since the Unix epoch, UTC."""
    model: str
    version: int | None
    latency_us: int
    status: str = STATUS_OK
    route: str = Route.PRIMARY
    transport: str = Transport.GRPC
    input: npt.NDArray[Any] | None = None
    """The input tensor as received (batch dimension included); None when not logged."""
    output: npt.NDArray[Any] | None = None
    """The output tensor (logits or probabilities per class); None on failure."""
    queue_us: int | None = None
    batch_size: int | None = None
    error: str | None = None


def predictions_and_confidences(
    scores: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Top class and its probability for each row of `scores` (samples x classes).

    Rows that already look like probabilities (non-negative, summing to 1) are used as they
    are; anything else is taken as logits and softmaxed. `kiln.data.profile` applies the same
    rule to the reference, so served and reference confidences compare like with like.
    """
    s = np.asarray(scores, dtype=np.float64)
    top = s.argmax(axis=1)
    top_score = s[np.arange(len(s)), top]
    softmax_top = 1.0 / np.exp(s - top_score[:, None]).sum(axis=1)
    probabilities = (s.min(axis=1) >= 0.0) & (np.abs(s.sum(axis=1) - 1.0) < 1e-3)
    return top, np.where(probabilities, top_score, softmax_top)


def _predictions(
    outputs: list[npt.NDArray[Any] | None],
) -> tuple[pa.Array, pa.Array]:
    """Prediction and confidence per request; null unless the request held one sample."""
    n = len(outputs)
    predictions = np.zeros(n, dtype=np.int64)
    confidences = np.zeros(n, dtype=np.float32)
    known = np.zeros(n, dtype=bool)
    # Group one-sample outputs by class count and compute each group in one numpy call.
    by_width: dict[int, list[int]] = {}
    for i, out in enumerate(outputs):
        if out is not None and out.size and (out.ndim == 1 or out.shape[0] == 1):
            by_width.setdefault(out.size, []).append(i)
    for width, rows in by_width.items():
        stacked = np.concatenate([outputs[i].reshape(1, width) for i in rows])  # type: ignore[union-attr]
        top, conf = predictions_and_confidences(stacked)
        predictions[rows], confidences[rows], known[rows] = top, conf, True
    return pa.array(predictions, mask=~known), pa.array(confidences, mask=~known)


def _list_column(arrays: list[npt.NDArray[Any] | None], dtype: type[np.generic]) -> pa.Array:
    """A list array of the flattened arrays (null where None), built without Python loops
    over elements: one concatenation and an offsets vector."""
    missing = np.fromiter((a is None for a in arrays), bool, len(arrays))
    present = [a.reshape(-1) for a in arrays if a is not None]
    lengths = np.zeros(len(arrays), dtype=np.int64)
    lengths[~missing] = [a.size for a in present]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(present).astype(dtype, copy=False) if present else np.empty(0, dtype)
    return pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(values), mask=pa.array(missing)
    )


def _shape_column(arrays: list[npt.NDArray[Any] | None]) -> pa.Array:
    missing = [a is None for a in arrays]
    lengths = [0 if a is None else a.ndim for a in arrays]
    dims = [d for a in arrays if a is not None for d in a.shape]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(dims, pa.int64()), mask=pa.array(missing, pa.bool_())
    )


def records_to_frame(records: list[TrafficRecord]) -> pl.DataFrame:
    """The rows of `records` in `TRAFFIC_SCHEMA`, built column by column through Arrow (a
    Python list of lists per row would cost milliseconds per thousand rows)."""
    inputs = [r.input for r in records]
    outputs = [r.output for r in records]
    predictions, confidences = _predictions(outputs)
    columns: dict[str, pa.Array] = {
        "request_id": pa.array([r.request_id for r in records], pa.large_string()),
        "timestamp": pa.array([r.timestamp_us for r in records], pa.timestamp("us", "UTC")),
        "model": pa.array([r.model for r in records], pa.large_string()),
        "version": pa.array([r.version for r in records], pa.int64()),
        "route": pa.array([str(r.route) for r in records], pa.large_string()),
        "transport": pa.array([str(r.transport) for r in records], pa.large_string()),
        "input": _list_column(inputs, np.float32),
        "input_shape": _shape_column(inputs),
        "output_shape": _shape_column(outputs),
        "scores": _list_column(outputs, np.float32),
        "prediction": predictions,
        "confidence": confidences,
        "latency_us": pa.array([r.latency_us for r in records], pa.int64()),
        "queue_us": pa.array([r.queue_us for r in records], pa.int64()),
        "batch_size": pa.array([r.batch_size for r in records], pa.int64()),
        "status": pa.array([r.status for r in records], pa.large_string()),
        "error": pa.array([r.error for r in records], pa.large_string()),
    }
    frame = pl.from_arrow(pa.table(columns))
    assert isinstance(frame, pl.DataFrame)
    return frame.cast(dict(TRAFFIC_SCHEMA))  # type: ignore[arg-type]


def utc_date(timestamp_us: int) -> str:
    return datetime.fromtimestamp(timestamp_us / 1e6, UTC).date().isoformat()
