"""Serving settings: `KILN_SERVE_*` environment variables or `kiln serve` options, passed into
the core and the server's constructors (nothing in serving reads the environment itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """How `kiln serve` serves. Every field can be set as `KILN_SERVE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="KILN_SERVE_", extra="ignore")

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""

    port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port (Triton's default); 0 picks a free one, printed on the ready line."""

    metrics_port: int | None = Field(default=8002, ge=0, le=65535)
    """Prometheus metrics port; 0 picks a free one, None disables the endpoint."""

    models: tuple[str, ...] = ()
    """References to serve (`digits`, `digits@candidate`, `digits:3`). The first reference
    to a model chooses the version requests get by default; further ones load more versions
    that requests select with `model_version`. Empty: every registered model's `production`."""

    bundle: Path | None = None
    """Serve the export bundles (`kiln models export`) at this path instead of `models`: a
    bundle file, an unpacked bundle (a directory with `manifest.json`, as KServe's storage
    initializer leaves a downloaded `.tar.gz`) or a directory of them (`/mnt/models` on
    KServe). Each is imported into the registry (every blob's hash checked) before the
    server starts, and its version served; each model's newest version is its default."""

    model_name: str | None = None
    """With `bundle`: serve the bundles' model under this name (KServe's `{{.Name}}`, the
    InferenceService's name, which clients address the model by); every bundle must then
    hold the same model."""

    max_batch_size: int = Field(default=32, ge=0)
    """Most rows one execution runs; 0 turns batching off. A model whose engine caps its batch
    lower gets the engine's cap."""

    max_queue_delay_us: int = Field(default=0, ge=0)
    """How long the oldest queued request may wait for more to batch with, in microseconds.
    0: never wait; requests that arrive while the engine is busy still batch together."""

    max_queue_size: int = Field(default=1024, ge=0)
    """Requests that may wait per model version; beyond it requests fail at once with
    RESOURCE_EXHAUSTED. 0: unbounded."""

    inline_idle_us: int = Field(default=300, ge=0)
    """At light load, a request that finds a CPU engine idle for at least this long runs at
    once on the event loop instead of on the engine's thread: two thread wake-ups saved, which
    on a 2-core host is ~25% of a small model's latency (`kiln.serving.batcher`). Under load
    requests arrive closer together and batch on the engine's thread. 0: always the thread."""

    execution: Literal["auto", "thread", "loop"] = "auto"
    """Where CPU engines compute. `thread`: on a worker thread per loaded version, while the
    event loop goes on receiving, decoding and batching (right when the process has a core
    for each). `loop`: on the event loop itself, between its passes over the transports (right
    on one core, where a worker thread adds no parallelism, only two thread switches per batch
    and a loop that cannot decode while the engine holds the core): requests that arrive
    while a batch computes form the next one. `auto`: `loop` when the process may use one core
    (its CPU affinity or cgroup quota), else `thread`. GPU engines and text models always
    compute on their thread; so does an engine whose largest warm-up batch or last batch took
    over 10 ms (the loop must stay responsive)."""

    default_timeout_us: int = Field(default=0, ge=0)
    """Queue timeout for requests that set none (their `timeout` parameter); 0: none."""

    threads: int = Field(default=0, ge=0)
    """Threads each engine computes with (intra-op); 0: KILN_THREADS, else one per core but one
    (the event loop needs a core of its own)."""

    engine_kind: str | None = None
    """Load this artifact kind (`onnxruntime`, `aotinductor:cpu`, ...) instead of the fastest
    one the host can run."""

    poll_interval_s: float = Field(default=1.0, gt=0)
    """How often the alias watcher asks the registry whether a served alias moved."""

    warmup: bool = True
    """Run each engine on zeros at batch 1 and at the maximum batch before it takes traffic."""

    drain_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM or unload: how long in-flight requests may take to finish."""

    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest gRPC message received or sent, and largest HTTP request body; bigger requests
    fail with RESOURCE_EXHAUSTED (gRPC) or 413 (HTTP)."""

    http_port: int | None = Field(default=8000, ge=0, le=65535)
    """KServe v2 HTTP/REST port (Triton's default), served by the same process and core as
    gRPC; 0 picks a free one, None serves no HTTP (`--no-http`)."""

    max_json_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest JSON part of an HTTP request (the whole body of a JSON request, the header of a
    binary one); bigger ones are refused (413). JSON is parsed on the event loop, which answers
    nothing else meanwhile: 4 MiB of numbers takes ~25 ms (orjson) on a 2-core host. Large
    tensors belong in the binary tensor extension, decoded without parsing."""

    max_feedback_items: int = Field(default=10_000, ge=1, le=50_000)
    """Most labels one feedback call may carry; a bigger call is refused as a whole
    (INVALID_ARGUMENT) and should be split. At most 50,000: the answer to a call whose every
    item is refused then stays well inside a client's default 4 MB message limit."""

    allow_nonfinite: bool = False
    """Accept NaN and infinite values in floating-point inputs. Off: such a request is refused
    (INVALID_ARGUMENT naming the input), since a model's answer to it means nothing and its
    traffic row would poison drift and retraining."""

    max_text_bytes: int = Field(default=64 * 1024, ge=1)
    """Longest string (UTF-8 bytes) one element of a text model's `text` input may hold; a
    longer one is refused (INVALID_ARGUMENT with the limit). Within the limit, a text longer
    than the tokenizer's max_length tokens is truncated to it (the response's traffic row
    says so), as the model was trained."""

    model_control: bool = False
    """Allow RepositoryModelLoad/Unload (`kiln serve --model-control`). Off by default, as in
    Triton: any client could otherwise take the production model down. A `token` enables
    them too, for the clients that hold it."""

    tls_cert: Path | None = None
    """PEM certificate chain; with `tls_key`, the server speaks TLS only."""

    tls_key: Path | None = None
    """PEM private key for `tls_cert`."""

    token: str | None = None
    """Bearer token required for repository load/unload (`authorization: Bearer TOKEN`);
    setting one enables load/unload for the clients that send it."""

    token_for_inference: bool = False
    """Require the token for every RPC except health checks and server reflection."""

    @property
    def model_control_enabled(self) -> bool:
        """Whether repository load/unload is allowed: `model_control`, or a token guards it."""
        return self.model_control or bool(self.token)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "TLS needs both a certificate and its key: pass --tls-cert and --tls-key together"
            )
        if self.model_name is not None and self.bundle is None:
            raise ValueError(
                "model_name renames the model of --bundle: pass --bundle PATH too, or drop "
                "--model-name (references already name their models)"
            )
        if self.bundle is not None and self.models:
            raise ValueError(
                "pass either references or --bundle: --bundle serves the versions it imports "
                "(name their model with --model-name)"
            )
        if self.token_for_inference and not self.token:
            raise ValueError("token_for_inference needs a token: set --token (KILN_SERVE_TOKEN)")
        return self
