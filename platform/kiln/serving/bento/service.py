"""The BentoML service: `bentoml serve kiln.serving.bento:KilnService`.

It runs the same serving core as `kiln serve` (model table, hot swap following the alias,
statistics, the traffic hook) behind BentoML's HTTP server, with BentoML's adaptive batching
on `predict`. Configuration is read from the environment once, at import, because BentoML's
decorators need the batch limits then:

- `KILN_MODEL`: registry reference to serve (`digits`, `digits@candidate`, `digits:3`);
  default: the registry's only model, at its `production` alias.
- `KILN_BENTO_MODEL`: a `kiln-NAME:vN` tag in BentoML's model store instead (what a built Bento
  serves; default there: the store's only `kiln-*` model).
- `KILN_BENTO_MAX_BATCH_SIZE` (32), `KILN_BENTO_MAX_LATENCY_MS` (1000): adaptive batching.
- `KILN_BENTO_TRAFFIC_LOG` (true): log traffic and accept /feedback.
- `KILN_BENTO_THREADS` (0: all cores), `KILN_BENTO_ENGINE_KIND`, `KILN_BENTO_POLL_INTERVAL_S`.
- `KILN_BENTO_MAX_BODY_BYTES` (16 MiB), `KILN_BENTO_MAX_IMAGE_PIXELS` (4096x4096),
  `KILN_BENTO_IMAGE_THREADS` (2): what one request may cost (413 / 400 beyond).

`/classify_texts` answers a text model's strings (`{"texts": [...]}`), tokenised by the
served version's own tokenizer in the core's text stage; `/predict` refuses a text model.
`/predict` answers a classification model with the class (`prediction`, `label`, `scores`)
and a regression model with its predicted values (`prediction`, a list, and the `output` they
come from). It takes one input array: a model with several inputs is refused per request
(400, saying to serve it with `kiln serve`), since adaptive batching joins requests along one
array's first axis.

Rollouts (`kiln rollout`) apply in registry mode as in `kiln serve`, per core request: with
adaptive batching on `predict`, the rows BentoML joined into one batch go to one version
together. Each row's traffic row carries the route the core reports (primary or canary);
shadow answers reach the log through the core's `shadow_hook`, one row per input row, with
the same request ids the client received.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, cast

import bentoml
import numpy as np
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kiln.errors import InvalidArgument, KilnError
from kiln.serving.bento.contract import (
    CONTRACT,
    Answer,
    Estimate,
    FeedbackItem,
    FeedbackReceipt,
    Inputs,
    Prediction,
    VersionField,
    class_names_or_indices,
    one_input_only,
    softmax,
)
from kiln.serving.bento.errors import to_http
from kiln.serving.bento.images import PILLOW_MAX_PIXELS, ImageDecoder
from kiln.serving.bento.middleware import BodyLimit, RetryHint
from kiln.serving.bento.source import ModelSource, open_source
from kiln.serving.bento.texts import TEXT_MODEL, TextBatch
from kiln.serving.core import ServingCore
from kiln.serving.messages import Feedback, InferRequest, InferResponse, TrafficEvent
from kiln.serving.settings import ServingSettings
from kiln.serving.table import ModelState
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import log_store
from kiln_engines import EngineOptions

log = logging.getLogger("kiln.serving.bento")


class BentoSettings(BaseSettings):
    """The BentoML service's settings (`KILN_BENTO_*`, plus `KILN_MODEL`)."""

    model_config = SettingsConfigDict(env_prefix="KILN_BENTO_", extra="ignore")

    reference: str | None = Field(default=None, validation_alias=AliasChoices("KILN_MODEL"))
    """Registry reference to serve; None: the registry's only model."""
    store_tag: str | None = Field(default=None, validation_alias=AliasChoices("KILN_BENTO_MODEL"))
    """A `kiln-NAME:vN` model in BentoML's store to serve instead of the registry."""
    max_batch_size: int = Field(default=32, ge=2)
    max_latency_ms: int = Field(default=1000, ge=1)
    """BentoML's batching deadline: requests it predicts cannot finish within it are refused
    with 503 (load shedding). Tight values shed load early on busy hosts (20 ms did at
    concurrency 8 on 2 cores)."""
    traffic_log: bool = True
    """Log every answered row to KILN_HOME/traffic and accept /feedback."""
    threads: int = Field(default=0, ge=0)
    engine_kind: str | None = None
    poll_interval_s: float = Field(default=1.0, gt=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest request body, in bytes; bigger ones are refused with 413 before they are read
    (from their Content-Length) or as soon as they pass the limit (chunked). BentoML parses a
    JSON body whole before Kiln sees it, at several times its size in memory and ~0.1 s per
    MiB of event-loop time, so this bounds what one request can cost. (BentoML 1.0 had a
    20 MB default of its own; 1.4 has no limit.)"""
    max_image_pixels: int = Field(default=4096 * 4096, ge=1, le=PILLOW_MAX_PIXELS)
    """Most pixels (width x height, read from the header) an uploaded image may have; bigger
    ones are refused with 400 before they are decoded. At most Pillow's own limit."""
    image_threads: int = Field(default=2, ge=1)
    """Threads that decode uploaded images (never the event loop). Decoding takes about 10
    bytes per pixel for a one-channel model and 32 for a colour one (170 / 520 MB at the
    default pixel limit), so this also bounds the memory decoding can take at once."""


SETTINGS = BentoSettings()


def _import_lazy_modules() -> None:
    """Import pandas now, on one thread, if it is installed.

    BentoML's batch splitter imports pandas lazily on the request path, and the traffic
    writer's Polars/Arrow conversions can do the same on their thread; two threads importing
    it at once fail with "partially initialized module 'pandas.core.frame'" (seen here).
    """
    import importlib.util

    if importlib.util.find_spec("pandas") is not None:
        importlib.import_module("pandas")


_NOT_A_CLASSIFIER = (
    "'{}' is a regression model: /classify_image answers classifiers; send its input arrays "
    "to /predict, which answers with the predicted values"
)


def row_ids(request_id: str, rows: int) -> list[str]:
    """The request ids of a core request's rows (`ID-0`, `ID-1`, ...): each row is answered
    and labelled on its own, and a shadow copy's rows get the same ids as the primary's."""
    return [f"{request_id}-{i}" for i in range(rows)]


@bentoml.service(name="kiln", traffic={"timeout": 60, "max_concurrency": 256})
class KilnService:
    # Declared so that `bentoml build` packs the exported model into the Bento.
    kiln_model = bentoml.models.BentoModel(SETTINGS.store_tag) if SETTINGS.store_tag else None

    def __init__(self) -> None:
        _import_lazy_modules()
        settings = Settings()
        options = EngineOptions(intra_op_threads=SETTINGS.threads or settings.thread_count())
        self.source: ModelSource = open_source(
            reference=SETTINGS.reference,
            store_tag=SETTINGS.store_tag,
            settings=settings,
            options=options,
            engine_kind=SETTINGS.engine_kind,
        )
        self.name = self.source.reference.split("@")[0].split(":")[0]
        serving = ServingSettings(
            max_batch_size=SETTINGS.max_batch_size,
            max_queue_delay_us=0,  # BentoML's dispatcher already waited to form the batch
            metrics_port=None,  # BentoML serves /metrics
            poll_interval_s=SETTINGS.poll_interval_s,
            threads=options.intra_op_threads,
        )
        # BentoML joins requests into batches before the core sees them, so the service logs
        # each row itself (the core's traffic hook would see one event per batch).
        self.sink = (
            TrafficSink(log_store(settings), feedback_source="http")
            if SETTINGS.traffic_log
            else None
        )
        # The core's shadow hook is the only traffic that reaches the sink through the core:
        # shadow answers arrive after the client's answer, so the service cannot log them.
        self.core = ServingCore(
            self.source.repository,
            serving,
            feedback_hook=self.sink.on_feedback if self.sink else None,
            shadow_hook=self._log_shadow,
        )
        self.core.add_listener(self._on_state)
        self.images = ImageDecoder(SETTINGS.max_image_pixels, SETTINGS.image_threads)
        log.info("kiln: serving %s from %s", self.source.reference, self.source.location)

    @bentoml.on_startup
    async def _start(self) -> None:
        await self.core.start([self.source.reference])
        self._update_contract()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        await self.core.stop()
        if self.sink is not None:
            self.sink.close()
        self.images.close()
        self.source.close()

    def __is_ready__(self) -> bool:
        return self.core.ready

    def _on_state(self, name: str, version: int, state: ModelState) -> None:
        if state is ModelState.READY and name == self.name:
            self._update_contract()

    def _update_contract(self) -> None:
        try:
            description = self.core.describe(self.name)
        except KilnError:
            return
        if len(description.inputs) != 1:
            # Refused per request, not at startup: the alias may move to a one-input version.
            reason = (
                TEXT_MODEL.format(self.name)
                if description.parameters.get("text_input")
                else one_input_only(self.name, [s.name for s in description.inputs])
            )
            log.warning("kiln: %s", reason)
            CONTRACT.refuse(reason)
            return
        spec = description.inputs[0]
        # The core's own request check, so that /predict refuses what the core would refuse
        # (non-finite values included, as the core's settings say) before batching.
        validator = self.core.resolve(self.name).validator
        CONTRACT.set(
            tuple(spec.shape[1:]), spec.dtype, SETTINGS.max_batch_size, spec.name, validator
        )

    async def _answer(
        self, inputs: np.ndarray | TextBatch, model: str = "", version: str = ""
    ) -> list[Answer]:
        name = model or self.name
        received = time.perf_counter_ns()
        request = InferRequest(
            model=name, version=version, inputs={}, id=uuid.uuid4().hex, transport="http"
        )
        try:
            loaded = self.core.resolve(name, version)
            if isinstance(inputs, TextBatch):
                request.inputs = inputs.feed(loaded)
            else:
                specs = loaded.description.inputs
                if loaded.text is not None:
                    raise InvalidArgument(TEXT_MODEL.format(name))
                if len(specs) != 1:
                    raise InvalidArgument(one_input_only(name, [s.name for s in specs]))
                request.inputs = {specs[0].name: CONTRACT.check(inputs)}
            response = await self.core.infer(request)
        except KilnError as exc:
            if self.sink is not None:
                failed = time.perf_counter_ns() - received
                self.sink.on_request(TrafficEvent(request, None, exc, None, failed, None))
            raise to_http(exc) from exc
        total_ns = time.perf_counter_ns() - received
        output, values = next(iter(response.outputs.items()))
        served = int(response.version)
        ids = row_ids(request.id, values.shape[0])
        self._log_rows(request, response, ids, total_ns, served)
        if self.source.task(served) == "regression":
            rows = values.reshape(values.shape[0], -1).astype(np.float64, copy=False)
            return [
                Estimate(
                    request_id=ids[i],
                    model=name,
                    version=served,
                    output=output,
                    prediction=rows[i].tolist(),
                )
                for i in range(rows.shape[0])
            ]
        probs = softmax(values.astype(np.float32, copy=False))
        top = probs.argmax(axis=1)
        labels = class_names_or_indices(self.source.class_names(served), probs.shape[1])
        return [
            Prediction(
                request_id=ids[i],
                model=name,
                version=served,
                prediction=int(top[i]),
                label=labels[int(top[i])],
                scores=probs[i].tolist(),
            )
            for i in range(probs.shape[0])
        ]

    def _log_rows(
        self,
        request: InferRequest,
        response: InferResponse,
        ids: list[str],
        total_ns: int,
        version: int,
    ) -> None:
        """One traffic row per answered row: each has its own request id for feedback, and
        the route the core reports (primary, canary, or shadow for a shadow's answer)."""
        if self.sink is None:
            return
        (input_name, batch), (output_name, outputs) = (
            next(iter(request.inputs.items())),
            next(iter(response.outputs.items())),
        )
        for i, request_id in enumerate(ids):
            row = InferRequest(
                model=request.model,
                inputs={input_name: batch[i : i + 1]},
                version=request.version,
                id=request_id,
                transport="http",
            )
            answer = InferResponse(
                response.model,
                response.version,
                request_id,
                {output_name: outputs[i : i + 1]},
                response.route,
            )
            event = TrafficEvent(row, answer, None, None, total_ns, version, response.route)
            self.sink.on_request(event)

    def _log_shadow(self, event: TrafficEvent) -> None:
        """The core's shadow hook: a shadow answer becomes one row per input row, under the
        ids the primary rows got; a failed shadow copy one row with its error."""
        if self.sink is None:
            return
        response = event.response
        if response is None or not response.outputs:
            self.sink.on_request(event)
            return
        rows = len(next(iter(response.outputs.values())))
        ids = row_ids(event.request.id, rows)
        self._log_rows(event.request, response, ids, event.total_ns, int(response.version))

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    async def predict(self, inputs: Inputs) -> list[Answer]:
        """Answer a batch of raw inputs (shape (N, ...) as in training); one answer per row:
        the class (`prediction`, `label`, `scores`) of a classification model, the predicted
        value(s) (`prediction`, a list, from `output`) of a regression model.

        Requests are joined by BentoML's adaptive batching, so each row gets its own request id.
        A model with several inputs is refused (400): serve it with `kiln serve`.
        """
        return await self._answer(inputs)

    @bentoml.api
    async def infer(
        self, inputs: Inputs, model: str = "", version: VersionField = ""
    ) -> list[Answer]:
        """Like `predict`, for a chosen model and loaded version (`version` "" = the default)."""
        return await self._answer(inputs, model, version)

    @bentoml.api
    async def classify_texts(self, texts: list[str]) -> list[Answer]:
        """Classify a text model's strings, `{"texts": ["a fine film", ...]}`: one answer per
        string, tokenised by the served version's own tokenizer (texts longer than its
        max_length tokens are truncated). Empty, over-long or too many strings are a 400
        naming the string; a model that is not a text model is a 400 saying where to send.
        """
        return await self._answer(TextBatch(texts, SETTINGS.max_batch_size))

    @bentoml.api
    async def classify_image(self, image: Path) -> Prediction:
        """Classify one PNG or JPEG image, preprocessed exactly as training read images.

        The header is checked first (at most KILN_BENTO_MAX_IMAGE_PIXELS), then the image is
        decoded on a worker thread. A regression model is refused (400): send its arrays to
        /predict. (One answer type keeps BentoML's OpenAPI generator working: it cannot
        describe a union at the top level.)
        """
        try:
            described = self.core.describe(self.name)
            if self.source.task(described.version) == "regression":
                raise InvalidArgument(_NOT_A_CLASSIFIER.format(self.name))
            if described.parameters.get("text_input"):
                raise InvalidArgument(TEXT_MODEL.format(self.name))
            spec = described.inputs[0]
            if len(spec.shape) != 4:
                raise InvalidArgument(
                    f"'{self.name}' takes inputs of shape {spec.shape}, not images; "
                    "send arrays to /predict instead"
                )
            channels, height, width = (int(d) for d in spec.shape[1:])
            array = await self.images.decode(image, channels, (height, width))
        except KilnError as exc:
            raise to_http(exc) from exc
        answer = (await self._answer(array[None]))[0]
        if not isinstance(answer, Prediction):  # the alias moved to a regressor meanwhile
            raise to_http(InvalidArgument(_NOT_A_CLASSIFIER.format(self.name)))
        return answer

    # model_info and feedback are coroutines so that they run on the event loop, as the core
    # expects of its callers (BentoML runs plain functions on a thread).
    @bentoml.api
    async def model_info(self) -> dict[str, Any]:
        """The served model: name, default version, inputs, outputs, task, class names."""
        try:
            d = self.core.describe(self.name)
        except KilnError as exc:
            raise to_http(exc) from exc
        return {
            "model": d.name,
            "version": d.version,
            "versions": list(d.versions),
            "backend": d.backend,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in d.inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in d.outputs
            ],
            "task": self.source.task(d.version),
            "class_names": self.source.class_names(d.version),
            "source": self.source.description,
        }

    @bentoml.api
    async def feedback(self, items: list[FeedbackItem]) -> FeedbackReceipt:
        """Ground truth for answered requests: `[{"request_id": ..., "label": 3}, ...]` for a
        classification model, `[{"request_id": ..., "value": 151.0}, ...]` for a regression
        model.

        Each item is stored or refused in the answer with its reason (an empty request id, a
        label outside the model's classes, a value that is not finite, the wrong one of the
        two for the model); the stored ones are written in the background.
        A full buffer refuses the whole call with 429 (nothing of it kept; retry after the
        Retry-After seconds), more than KILN_SERVE_MAX_FEEDBACK_ITEMS (10,000) with 400.
        """
        now = time.time_ns()
        try:
            rejected = self.core.feedback(
                [Feedback(i.request_id, i.label, i.model or self.name, now, i.value) for i in items]
            )
        except KilnError as exc:
            raise to_http(exc) from exc
        return FeedbackReceipt(
            accepted=len(items) - len(rejected),
            rejected=[{"index": index, "reason": reason} for index, reason in rejected],
        )


# Bound every request body before BentoML reads it; tell clients when to retry a 429 or 503.
# (`@bentoml.service` made the class a `bentoml.Service`; mypy applies no class decorator.)
_service = cast("bentoml.Service[KilnService]", KilnService)
_service.add_asgi_middleware(BodyLimit, max_bytes=SETTINGS.max_body_bytes)
_service.add_asgi_middleware(RetryHint)
