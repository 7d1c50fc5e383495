"""The values that cross between transports and the serving core: requests, responses, timings,
model descriptions. Plain dataclasses of numpy arrays and strings; no protobuf, no HTTP."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kiln.errors import KilnError
from kiln.traffic import Route

ParameterValue = bool | int | float | str


@dataclass(slots=True)
class InferRequest:
    """One inference request as the core sees it, whatever transport carried it."""

    model: str
    """The model's name."""
    inputs: dict[str, npt.NDArray[Any]]
    """Input tensors by name. Arrays decoded from a request may be read-only views."""
    version: str = ""
    """The requested version ("3"); empty for the version the server serves by default."""
    id: str = ""
    """The client's request id; the core assigns one when it is empty."""
    outputs: tuple[str, ...] = ()
    """Requested output names, in the order the response should list them; empty for all."""
    timeout_us: int = 0
    """How long the request may wait in the queue, in microseconds; 0 for no limit."""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    """Request parameters other than those above, as sent."""
    received_ns: int = 0
    """`time.perf_counter_ns()` when the transport received it; 0 to let the core stamp it."""
    transport: str = ""
    """Which transport carried it (a `kiln.traffic.Transport`: each transport says), for the
    traffic log; empty for a request made in-process (tests, benchmarks)."""


@dataclass(slots=True)
class InferResponse:
    """The answer to an `InferRequest`: output tensors of the version that computed them."""

    model: str
    version: str
    id: str
    outputs: dict[str, npt.NDArray[Any]]
    """Output tensors in the requested order (all outputs when none were requested)."""
    route: Route = Route.PRIMARY
    """`Route.CANARY` when a running canary answered it; `Route.SHADOW` only for the copies
    a shadow rollout ran (the shadow hook sees those; clients never do)."""
    text_stats: TextStats | None = None
    """What the version's tokenizer made of each row, for a text model (strings or
    pre-tokenised inputs alike); None for other models. Not sent to clients: the traffic
    hook logs it."""


@dataclass(frozen=True, slots=True)
class TextStats:
    """Per row of a text model's request: how its text was tokenised.

    For a request of strings, the tokenizer's own counts; for pre-tokenised `input_ids` and
    `attention_mask`, counted from them (the mask's ones, the unknown id among them; a
    pre-tokenised row is never reported truncated: the server cannot know).
    """

    tokens: npt.NDArray[np.int64]
    """Tokens the model read (after truncation to the tokenizer's max_length)."""
    unknown: npt.NDArray[np.int64]
    """How many of them are the tokenizer's unknown token."""
    truncated: npt.NDArray[np.bool_]
    """Texts longer than max_length tokens, whose end the model did not see."""


@dataclass(slots=True)  # not frozen: built per request, and frozen init costs 3x
class Timings:
    """Where one request's time went, in nanoseconds.

    The compute durations are those of the batch the request ran in (every request of a batch
    reports the same ones), as Triton's statistics count them.
    """

    queue_ns: int
    """From entering the model's queue to its batch starting."""
    compute_input_ns: int
    """Assembling the batch's inputs."""
    compute_infer_ns: int
    """Running the engine."""
    compute_output_ns: int
    """Splitting the batch's outputs per request."""
    batch_size: int
    """Rows in the batch the request ran in (its own rows included)."""


@dataclass(slots=True)  # built per request: frozen init costs 3x
class TrafficEvent:
    """What the traffic hook receives, once per inference request, success or failure.

    Read-only by contract: neither the core nor a hook modifies it once emitted.
    """

    request: InferRequest
    response: InferResponse | None
    """None when the request failed."""
    error: KilnError | None
    """The error the client received; None on success. Unexpected failures appear as
    `KilnError` with code INTERNAL and a generic message."""
    timings: Timings | None
    """None when the request failed before it reached a queue (validation, unknown model)."""
    total_ns: int
    """From receipt to response (or error)."""
    served_version: int | None
    """The version that served (or would have served) it; None when no model was resolved."""
    route: Route = Route.PRIMARY
    """How the request reached `served_version`: primary, canary, or shadow (a copy of a
    request whose answer was not returned; its `request` is the primary request's, same id)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a served model, in KServe terms."""

    name: str
    datatype: str
    """A KServe datatype (`FP32`, `INT64`, `BYTES`, …)."""
    shape: tuple[int, ...]
    """Full shape including the batch dimension when the model batches; -1 where variable."""
    dtype: np.dtype[Any]
    """The numpy dtype requests are decoded to."""
    optional: bool = False
    """The model takes requests without it: a text model takes either its `text` input or
    the pre-tokenised ones (ModelConfig marks each `optional`)."""


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """What metadata and config RPCs report about one loaded version."""

    name: str
    version: int
    versions: tuple[int, ...]
    """Every loaded version of the model."""
    platform: str
    """Triton's platform name for the engine kind, e.g. `onnxruntime_onnx`."""
    backend: str
    """The engine kind (`onnxruntime`, `aotinductor`, `tensorrt`)."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    """0 when the model has no batch dimension (requests are never combined)."""
    max_queue_delay_us: int
    max_queue_size: int
    default_timeout_us: int
    instances: int
    """Model executions that may run at once."""
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Notes for ModelConfig's `parameters` (a text model's tokenizer sha256, max_length and
    the text limits); empty for other models."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    """Empty for a registered model that is not loaded."""
    state: str
    """READY, LOADING, UNLOADING or UNAVAILABLE."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Feedback:
    """Ground truth for a served request, as the feedback hook receives it: a label (the
    true class of a classifier's request) or a value (the true target of a regressor's)."""

    request_id: str
    label: int | None
    """None when the feedback is a value."""
    model: str = ""
    """The model that served the request, when the client said."""
    received_at_ns: int = 0
    """`time.time_ns()` when the server received it."""
    value: float | None = None
    """The true target of a regression model's request; None for a label."""
    transport: str = ""
    """Which transport carried it (a `kiln.traffic.Transport` value); empty: the feedback
    hook's default (`TrafficSink.feedback_source`)."""


_DIRECTORIES = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`]+/)+(?=[^\s/'\"`])")
"""The directories of an absolute path (`/home/u/.kiln/artifacts/sha256/ab/`), not inside a
word or a URL (`grpc.health.v1/Check`, `sqlite:////abs`)."""


def public_text(text: str) -> str:
    """`text` fit to show a client: absolute paths keep only their last part (`.../abcdef`).

    Where a server keeps its files (KILN_HOME, temporary files, libraries) is none of a
    client's business; the server log keeps the whole message.
    """
    return _DIRECTORIES.sub(".../", text) if "/" in text else text


MAX_CLIENT_MESSAGE_BYTES = 2000
"""Longest error message sent to a client, in UTF-8 bytes (over gRPC it travels as
`grpc-message` metadata, percent-encoded, and clients refuse more than 8 KB of metadata)."""


def client_message(text: str) -> str:
    """An error message as any client may see it, whatever layer wrote it: no server paths
    (`public_text`), control characters escaped, at most `MAX_CLIENT_MESSAGE_BYTES`."""
    text = public_text(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    encoded = text.encode()
    if len(encoded) > MAX_CLIENT_MESSAGE_BYTES:
        text = encoded[: MAX_CLIENT_MESSAGE_BYTES - 40].decode(errors="ignore")
        text += f"... ({len(encoded)} bytes, shortened)"
    return text
