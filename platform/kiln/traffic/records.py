"""One served request as the logger takes it, and the conversion of many into a Polars frame.

A `TrafficRecord` holds references, not copies, and so do the rows the logger buffers (tuples
in `TrafficColumns` order): the writer thread transposes a whole flush into `TrafficColumns`
and does the numeric work (flattening tensors, argmax, softmax) once per column.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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
    texts: npt.NDArray[Any] | Sequence[str] | None = None
    """A text model's input strings (str, or UTF-8 bytes as a BYTES tensor carries them: the
    writer thread decodes them); None when not logged or not a text request."""
    text_tokens: npt.NDArray[Any] | Sequence[int] | None = None
    """Tokens per string after truncation (text models only)."""
    text_unknown: npt.NDArray[Any] | Sequence[int] | None = None
    """Unknown tokens per string (text models only)."""


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


class TrafficColumns(NamedTuple):
    """Many requests, column by column, in `TrafficRecord`'s field order: what the writer
    thread turns into a frame. Each field holds one value per request."""

    request_id: Sequence[str]
    timestamp_us: Sequence[int]
    model: Sequence[str]
    version: Sequence[int | None]
    latency_us: Sequence[int]
    status: Sequence[str]
    route: Sequence[str]
    transport: Sequence[str]
    input: Sequence[npt.NDArray[Any] | None]
    output: Sequence[npt.NDArray[Any] | None]
    queue_us: Sequence[int | None]
    batch_size: Sequence[int | None]
    error: Sequence[str | None]
    texts: Sequence[npt.NDArray[Any] | Sequence[str] | None]
    text_tokens: Sequence[npt.NDArray[Any] | Sequence[int] | None]
    text_unknown: Sequence[npt.NDArray[Any] | Sequence[int] | None]

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]]) -> TrafficColumns:
        """Columns of rows that are tuples in field order (a transpose in C)."""
        columns = tuple(zip(*rows, strict=True))
        return cls(*columns) if columns else cls(*([()] * len(cls._fields)))

    @classmethod
    def from_records(cls, records: Sequence[TrafficRecord]) -> TrafficColumns:
        return cls.from_rows(map(record_row, records))


record_row: Callable[[TrafficRecord], tuple[Any, ...]] = operator.attrgetter(
    *TrafficColumns._fields
)
"""A record's row: its fields in `TrafficColumns` order (in C)."""
_shape = operator.attrgetter("shape")


def _tensors(
    arrays: Sequence[npt.NDArray[Any] | None], dtype: type[np.generic]
) -> tuple[pa.Array, pa.Array, npt.NDArray[Any] | None]:
    """The flattened tensors as a list column, their shapes as another, and, when every row
    holds a tensor of one same shape (the usual case), all of them stacked as (rows, size).

    The uniform case costs one concatenation; mixed shapes and missing tensors take a
    general path (one reshape per row). Tensors that are not numbers (a BYTES input a float
    model refused) are logged as missing: values and shape both null. Readers rely on that
    (a shape means values of that shape are there), and one such tensor must not cost the
    other rows of its flush.
    """
    try:
        return _numeric_tensors(arrays, dtype)
    except (TypeError, ValueError):  # strings or objects among them: keep the numbers only
        numeric = [a if a is not None and a.dtype.kind in "biuf" else None for a in arrays]
        return _numeric_tensors(numeric, dtype)


def _numeric_tensors(
    arrays: Sequence[npt.NDArray[Any] | None], dtype: type[np.generic]
) -> tuple[pa.Array, pa.Array, npt.NDArray[Any] | None]:
    n = len(arrays)
    first = arrays[0] if n else None
    try:
        uniform = len(set(map(_shape, arrays))) == 1  # in C: ~0.1 us a row
    except AttributeError:  # a None among them
        uniform = False
    if uniform and first is not None and first.ndim >= 1:
        size, ndim = first.size, first.ndim
        stacked = np.concatenate(arrays).reshape(n, size).astype(dtype, copy=False)  # type: ignore[arg-type]
        values = pa.LargeListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int64) * size), pa.array(stacked.reshape(-1))
        )
        shapes = pa.LargeListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int64) * ndim),
            pa.array(np.tile(np.asarray(first.shape, dtype=np.int64), n)),
        )
        return values, shapes, stacked
    return _list_column(arrays, dtype), _shape_column(arrays), None


def _predictions(
    outputs: Sequence[npt.NDArray[Any] | None], stacked: npt.NDArray[Any] | None
) -> tuple[pa.Array, pa.Array]:
    """Prediction and confidence per request; null unless the request held one sample."""
    n = len(outputs)
    if stacked is not None:  # every output has the same shape
        first = outputs[0]
        assert first is not None
        if stacked.shape[1] and (first.ndim == 1 or first.shape[0] == 1):
            top, conf = predictions_and_confidences(stacked)
            return pa.array(top), pa.array(conf.astype(np.float32))
        return pa.nulls(n, pa.int64()), pa.nulls(n, pa.float32())
    predictions = np.zeros(n, dtype=np.int64)
    confidences = np.zeros(n, dtype=np.float32)
    known = np.zeros(n, dtype=bool)
    # Group one-sample outputs by class count and compute each group in one numpy call.
    by_width: dict[int, list[int]] = {}
    for i, out in enumerate(outputs):
        if (
            out is not None
            and out.size
            and (out.ndim == 1 or out.shape[0] == 1)
            and out.dtype.kind in "biuf"
        ):
            by_width.setdefault(out.size, []).append(i)
    for width, rows in by_width.items():
        group = np.concatenate([outputs[i].reshape(1, width) for i in rows])  # type: ignore[union-attr]
        top, conf = predictions_and_confidences(group)
        predictions[rows], confidences[rows], known[rows] = top, conf, True
    return pa.array(predictions, mask=~known), pa.array(confidences, mask=~known)


def _list_column(arrays: Sequence[npt.NDArray[Any] | None], dtype: type[np.generic]) -> pa.Array:
    """A list array of the flattened arrays (null where None): one concatenation and an
    offsets vector."""
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


def _shape_column(arrays: Sequence[npt.NDArray[Any] | None]) -> pa.Array:
    missing = [a is None for a in arrays]
    lengths = [0 if a is None else a.ndim for a in arrays]
    dims = [d for a in arrays if a is not None for d in a.shape]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(dims, pa.int64()), mask=pa.array(missing, pa.bool_())
    )


def _as_str(value: Any) -> str:
    # The server validated BYTES strings as UTF-8 already; a caller that logs other bytes
    # still gets its row written, with U+FFFD where the bytes were not UTF-8.
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _text_column(texts: Sequence[npt.NDArray[Any] | Sequence[str] | None]) -> pa.Array:
    """The strings of each request as a list of strings (null where None). Only text
    requests carry any, so a flush of other models' rows costs one scan for None."""
    if all(t is None for t in texts):
        return pa.nulls(len(texts), pa.large_list(pa.large_string()))
    rows = [
        None if t is None else [_as_str(v) for v in np.asarray(t, dtype=object).reshape(-1)]
        for t in texts
    ]
    return pa.array(rows, pa.large_list(pa.large_string()))


def _count_column(counts: Sequence[npt.NDArray[Any] | Sequence[int] | None]) -> pa.Array:
    """Per-string token counts as a list of int32 per request (null where None)."""
    if all(c is None for c in counts):
        return pa.nulls(len(counts), pa.large_list(pa.int32()))
    return _list_column([None if c is None else np.asarray(c) for c in counts], np.int32)


def columns_to_frame(columns: TrafficColumns) -> pl.DataFrame:
    """The requests of `columns` in `TRAFFIC_SCHEMA`, built column by column through Arrow
    (a Python list per row would cost milliseconds per thousand rows)."""
    c = columns
    inputs, input_shapes, _ = _tensors(c.input, np.float32)
    scores, output_shapes, stacked = _tensors(c.output, np.float32)
    predictions, confidences = _predictions(c.output, stacked)
    arrays: dict[str, pa.Array] = {
        "request_id": pa.array(c.request_id, pa.large_string()),
        "timestamp": pa.array(c.timestamp_us, pa.timestamp("us", "UTC")),
        "model": pa.array(c.model, pa.large_string()),
        "version": pa.array(c.version, pa.int64()),
        "route": pa.array(c.route, pa.large_string()),
        "transport": pa.array(c.transport, pa.large_string()),
        "input": inputs,
        "input_shape": input_shapes,
        "output_shape": output_shapes,
        "scores": scores,
        "prediction": predictions,
        "confidence": confidences,
        "latency_us": pa.array(c.latency_us, pa.int64()),
        "queue_us": pa.array(c.queue_us, pa.int64()),
        "batch_size": pa.array(c.batch_size, pa.int64()),
        "status": pa.array(c.status, pa.large_string()),
        "error": pa.array(c.error, pa.large_string()),
        "texts": _text_column(c.texts),
        "text_tokens": _count_column(c.text_tokens),
        "text_unknown": _count_column(c.text_unknown),
    }
    frame = pl.from_arrow(pa.table(arrays))
    assert isinstance(frame, pl.DataFrame)
    return frame.cast(dict(TRAFFIC_SCHEMA))  # type: ignore[arg-type]


def records_to_frame(records: Sequence[TrafficRecord]) -> pl.DataFrame:
    """The rows of `records` in `TRAFFIC_SCHEMA`."""
    return columns_to_frame(TrafficColumns.from_records(records))
