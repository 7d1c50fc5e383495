"""Bearer-token authentication for the gRPC server.

With a token configured, repository load and unload need `authorization: Bearer TOKEN`
metadata; with `token_for_inference`, every inference and feedback RPC does too. Health checks,
reflection, ServerLive and ServerReady stay open so orchestrators can probe without secrets.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kiln.errors import NotAuthenticated
from kiln.serving.grpc.status import status_of

_SERVICE = "/inference.GRPCInferenceService/"
ALWAYS_PROTECTED = frozenset({_SERVICE + "RepositoryModelLoad", _SERVICE + "RepositoryModelUnload"})
NEVER_PROTECTED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
NEVER_PROTECTED = frozenset({_SERVICE + "ServerLive", _SERVICE + "ServerReady"})


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses protected calls without the right bearer token (UNAUTHENTICATED)."""

    def __init__(self, token: str, *, protect_inference: bool) -> None:
        self._expected = f"Bearer {token}".encode()
        self._protect_inference = protect_inference

    def _protected(self, method: str) -> bool:
        if method in ALWAYS_PROTECTED:
            return True
        if not self._protect_inference or method in NEVER_PROTECTED:
            return False
        return not method.startswith(NEVER_PROTECTED_PREFIXES)

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not self._protected(details.method):
            return handler
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                if hmac.compare_digest(given, self._expected):
                    return handler
                return _refuse(handler, "the bearer token is wrong")
        return _refuse(handler, "this call needs `authorization: Bearer TOKEN` metadata")


def _refuse(handler: grpc.RpcMethodHandler, why: str) -> grpc.RpcMethodHandler:
    code, message = status_of(NotAuthenticated(f"{why}; use the token the server was started with"))

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    if handler.request_streaming or handler.response_streaming:
        # Streaming handlers abort the same way; the request iterator is never read.
        return grpc.stream_stream_rpc_method_handler(
            abort,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
