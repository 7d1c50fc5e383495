"""`inference.GRPCInferenceService` and `kiln.v1.Feedback` over the serving core.

Each method converts the request (`convert`), calls the core, converts the answer back. Errors
are translated in one place (`status.rpc`). Shared-memory, trace and log-settings RPCs are not
overridden: they answer UNIMPLEMENTED (`server`), and ServerMetadata does not list them.

ModelInfer and ModelStreamInfer receive their requests as wire bytes and parse them here
(`convert.decode`); the server parses every other method's request before calling it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from kiln import __version__
from kiln.errors import FeedbackRejected, InvalidArgument, KilnError
from kiln.serving.control import repository_reference
from kiln.serving.core import ServingCore
from kiln.serving.grpc import convert
from kiln.serving.grpc.generated.inference import grpc_service_pb2 as pb
from kiln.serving.grpc.generated.inference import grpc_service_pb2_grpc as pb_grpc
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2 as fb
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2_grpc as fb_grpc
from kiln.serving.grpc.status import INTERNAL_MESSAGE, abort, rpc, status_of
from kiln.serving.grpc.wire import RequestDecoder, ResponseEncoder
from kiln.serving.messages import Feedback

EXTENSIONS = ("model_repository", "model_configuration", "statistics", "parameters")
"""The KServe / Triton protocol extensions this server implements, as ServerMetadata lists."""

Context: TypeAlias = grpc.aio.ServicerContext

log = logging.getLogger("kiln.serving.grpc")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self.core = core
        self._encoder = ResponseEncoder()
        self._decoder = RequestDecoder()

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self.core.live)

    @rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.core.ready)

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    @rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        return pb.ServerMetadataResponse(name="kiln", version=__version__, extensions=EXTENSIONS)

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        return convert.model_metadata(self.core.describe(request.name, request.version))

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> Any:
        return convert.model_config(self.core.describe(request.name, request.version))

    async def ModelInfer(self, request: bytes, context: Context) -> bytes:
        # The hot path: no `rpc` wrapper (one coroutine less per request), and the answer
        # leaves as wire bytes (`wire`; the server registers pass-through (de)serializers).
        try:
            infer_request = self._decoder.decode(request, time.perf_counter_ns())
            return self._encoder.encode(await self.core.infer(infer_request))
        except Exception as exc:
            await abort(context, exc, "ModelInfer")

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Requests of one stream run concurrently; responses come back as they finish,
        # each carrying its request's id. A failed request is an error_message on the stream,
        # not the end of the stream (Triton's semantics): every request gets one answer.
        # Bytes that are no ModelInferRequest end the stream (nothing later can be trusted to
        # be framed as the client meant) with INVALID_ARGUMENT, once the requests before them
        # are answered.
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        broken: list[Exception] = []

        async def one(message: pb.ModelInferRequest) -> None:
            try:
                request = convert.infer_request(message, time.perf_counter_ns())
                response = convert.infer_response(await self.core.infer(request))
                answer = pb.ModelStreamInferResponse(infer_response=response)
            except Exception as exc:
                if isinstance(exc, KilnError):
                    _, text = status_of(exc)
                else:
                    log.error("a ModelStreamInfer request failed unexpectedly", exc_info=exc)
                    text = INTERNAL_MESSAGE
                failed = pb.ModelInferResponse(id=message.id, model_name=message.model_name)
                answer = pb.ModelStreamInferResponse(error_message=text, infer_response=failed)
            answers.put_nowait(answer)

        async def read() -> None:
            try:
                count = 0
                async for data in requests:
                    count += 1
                    try:
                        message = convert.decode(pb.ModelInferRequest, data)
                    except KilnError as exc:
                        broken.append(
                            InvalidArgument(
                                f"message {count} of the stream: {exc.message}; the stream "
                                "ends here, after the answers to the messages before it"
                            )
                        )
                        break
                    task = asyncio.ensure_future(one(message))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.gather(*pending)
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            try:
                await reader
            except Exception as exc:  # reading the stream failed: the client's side broke
                broken.append(exc)
            if broken:
                await abort(context, broken[0], "ModelStreamInfer")
        finally:
            reader.cancel()
            for task in pending:
                task.cancel()

    @rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        return convert.model_statistics(self.core.statistics(request.name, request.version))

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        return convert.repository_index(await self.core.repository_index(request.ready))

    @rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        await self.core.load(repository_reference(request.model_name, request.parameters))
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        await self.core.unload(repository_reference(request.model_name, request.parameters))
        return pb.RepositoryModelUnloadResponse()


class FeedbackServicer(fb_grpc.FeedbackServicer):
    """`kiln.v1.Feedback`: labels or values for served requests, handed to the core's
    feedback hook."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    @rpc
    async def SubmitFeedback(self, request: fb.SubmitFeedbackRequest, context: Context) -> Any:
        rejected = self.core.feedback([_feedback(request.item)])
        if rejected:
            raise FeedbackRejected(f"feedback rejected: {rejected[0][1]}")
        return fb.SubmitFeedbackResponse()

    @rpc
    async def SubmitFeedbackBatch(
        self, request: fb.SubmitFeedbackBatchRequest, context: Context
    ) -> Any:
        rejected = self.core.feedback([_feedback(item) for item in request.items])
        return fb.SubmitFeedbackBatchResponse(
            accepted=len(request.items) - len(rejected),
            rejected=[
                fb.SubmitFeedbackBatchResponse.Rejected(index=i, reason=r) for i, r in rejected
            ],
        )


def _feedback(item: fb.FeedbackItem) -> Feedback:
    if not item.HasField("value"):
        return Feedback(item.request_id, item.label, item.model_name, time.time_ns())
    # proto3 cannot tell an unset label from 0: beside a value, only a non-zero one was sent.
    label = item.label or None
    return Feedback(item.request_id, label, item.model_name, time.time_ns(), item.value)
