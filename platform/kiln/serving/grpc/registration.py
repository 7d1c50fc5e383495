"""Registering gRPC services so that what clients send cannot make them answer UNKNOWN.

A generated `add_..._to_server` registers handlers whose deserializers run before any Kiln
code: bytes that are no such message end the call UNKNOWN with "Unexpected <class
'google.protobuf.message.DecodeError'>", and a method the servicer does not override raises
NotImplementedError, named in the status too. `add` registers the same handlers receiving
bytes instead: each parses its request (`convert.decode`: INVALID_ARGUMENT saying what was
expected), and unimplemented methods answer UNIMPLEMENTED saying so.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from kiln.errors import KilnError
from kiln.serving.grpc import convert
from kiln.serving.grpc.generated.inference import grpc_service_pb2, grpc_service_pb2_grpc
from kiln.serving.grpc.servicer import InferenceServicer
from kiln.serving.grpc.status import status_of


class _Registrations:
    """Stands in for a server to collect what a generated `add_..._to_server` registers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same table arrives through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def add(
    server: grpc.aio.Server,
    register: Callable[[Any, Any], None],
    servicer: object,
    base: type | None = None,
    own: dict[str, grpc.RpcMethodHandler] | None = None,
) -> None:
    """Register `servicer` as the generated `register` would, but with every request parsed
    by `_parsing`, the handlers in `own` instead of the generated ones, and the methods that
    `base` declares and `servicer` does not implement answering UNIMPLEMENTED."""
    found = _Registrations()
    register(servicer, found)
    handlers = {}
    for name, handler in found.handlers.items():
        if own and name in own:
            handlers[name] = own[name]
        elif base is not None and getattr(type(servicer), name) is getattr(base, name, None):
            handlers[name] = _unimplemented(f"{found.service}.{name}", handler)
        else:
            handlers[name] = _parsing(handler)
    generic = grpc.method_handlers_generic_handler(found.service, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(found.service, handlers)


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """The KServe v2 service. ModelInfer and ModelStreamInfer parse their requests themselves
    (`servicer`), and ModelInfer's answer leaves as the bytes it returns (`wire`)."""
    stream_answer = grpc_service_pb2.ModelStreamInferResponse.SerializeToString
    add(
        server,
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
        servicer,
        grpc_service_pb2_grpc.GRPCInferenceServiceServicer,
        own={
            "ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.ModelInfer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                servicer.ModelStreamInfer, response_serializer=stream_answer
            ),
        },
    )


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    behaviour: Callable[..., Any] = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return behaviour


_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _bytes_in(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]) -> Any:
    """A handler of `handler`'s kind and answers that runs `behaviour` on request bytes."""
    make: Any = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, response_serializer=handler.response_serializer)


def _parsing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` receiving bytes and parsing them with its own deserializer's message type."""
    parse = handler.request_deserializer
    message_type = getattr(parse, "__self__", None)
    if parse is None or message_type is None:
        return handler
    inner = _behaviour(handler)

    async def parsed(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return convert.decode(message_type, data)
        except KilnError as exc:
            await context.abort(*status_of(exc))

    async def each(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async for data in requests:
            yield await parsed(data, context)

    behaviour: Callable[..., Any]
    if handler.request_streaming:
        if inspect.isasyncgenfunction(inner):

            async def behaviour(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                async for answer in inner(each(requests, context), context):
                    yield answer

        else:

            async def behaviour(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                return await inner(each(requests, context), context)

    elif inspect.isasyncgenfunction(inner):

        async def behaviour(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            async for answer in inner(await parsed(data, context), context):
                yield answer

    else:

        async def behaviour(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await inner(await parsed(data, context), context)

    return _bytes_in(handler, behaviour)


def _unimplemented(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = (
        f"{method} is not implemented by Kiln; ServerMetadata lists the protocol extensions "
        "it implements (tensors travel in the request: no shared memory)"
    )

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return _bytes_in(handler, refuse)
