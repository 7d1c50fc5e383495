"""The candidate HTTP stacks of `http_stacks.py`, each serving one `HttpApp` in the running
event loop (the loop `kiln serve`'s grpc.aio server runs in), through the thinnest adapter
each allows: a parsed `HttpRequest` in, the `HttpResponse` out.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[Any], Awaitable[Any]]
"""`HttpApp.handle`: HttpRequest -> HttpResponse."""


class BenchHandler:
    """`HttpApp.handle` plus a count of infer requests (`GET /bench/count`, for CPU per
    request) and, with `replay`, the first infer answer returned for every later one without
    calling HttpApp (no parsing, no core, no model): what the stack alone costs."""

    def __init__(self, app: Any, replay: bool) -> None:
        self.app, self.replay = app, replay
        self.count = 0
        self.answer: Any = None

    async def handle(self, request: Any) -> Any:
        from kiln.serving.http.app import HttpResponse

        if request.path == "/bench/count":
            return HttpResponse(200, str(self.count).encode())
        if not request.path.endswith("/infer"):
            return await self.app.handle(request)
        self.count += 1
        if self.answer is not None:
            return self.answer
        response = await self.app.handle(request)
        if self.replay and response.status == 200:
            self.answer = response
        return response


# -- the adapters: each serves `handle` on `sock` in the running event loop --------------------


async def serve_kiln(core: Any, settings: Any, handler: BenchHandler) -> None:
    """Kiln's own: `HttpServer` (an aiohttp `web.Application` with one catch-all route)."""
    from kiln.serving.http.server import HttpServer

    server = HttpServer(core, settings)
    server.app = handler  # HttpServer answers through `self.app.handle`
    print(f"http port {await server.start()}", flush=True)
    await asyncio.Event().wait()


async def serve_aiohttp_lowlevel(handle: Handler, sock: socket.socket) -> None:
    """aiohttp's low-level `web.Server`: no Application, no router, no middleware chain."""
    from aiohttp import web

    from kiln.serving.http.app import HttpRequest

    async def adapter(request: web.BaseRequest) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await request.read()
        answer = await handle(HttpRequest(request.method, request.path, headers, body))
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

    runner = web.ServerRunner(web.Server(adapter), handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    print(f"http port {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def asgi_app(handle: Handler) -> Callable[..., Awaitable[None]]:
    """A raw ASGI application over `handle`: no framework between the server and Kiln."""
    from kiln.serving.http.app import HttpRequest

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; nothing else is served
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        response = await handle(
            HttpRequest(scope["method"], scope["path"], headers, b"".join(chunks))
        )
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        out.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await send({"type": "http.response.body", "body": response.body})

    return app


def starlette_app(handle: Handler) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from kiln.serving.http.app import HttpRequest

    async def endpoint(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await request.body()
        answer = await handle(HttpRequest(request.method, request.url.path, headers, body))
        return Response(answer.body, answer.status, headers=dict(answer.headers))

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


async def serve_uvicorn(app: Any, sock: socket.socket, parser: str) -> None:
    import uvicorn

    config = uvicorn.Config(
        app, loop="none", http=parser, lifespan="off", log_level="warning", access_log=False
    )
    print(f"http port {sock.getsockname()[1]}", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


async def serve_granian(handle: Handler, sock: socket.socket, interface: str) -> None:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    from kiln.serving.http.app import HttpRequest

    port = sock.getsockname()[1]
    sock.close()  # granian binds the address itself: take the free port the socket found

    async def rsgi(scope: Any, protocol: Any) -> None:
        headers = {k.lower(): v for k, v in scope.headers.items()}
        body = await protocol()
        response = await handle(HttpRequest(scope.method, scope.path, headers, body))
        protocol.response_bytes(response.status, list(response.headers), response.body)

    target: Any = rsgi if interface == "rsgi" else asgi_app(handle)
    kind = Interfaces.RSGI if interface == "rsgi" else Interfaces.ASGINL
    server = Server(target, port=port, interface=kind, log_enabled=False, websockets=False)
    print(f"http port {port}", flush=True)
    await server.serve()


# -- the server process -----------------------------------------------------------------------


async def serve_stack(stack: str, handler: BenchHandler, core: Any, settings: Any) -> None:
    """Serve `handler` with `stack` on a free port; prints `http port N`, never returns."""
    handle = handler.handle
    # IPPROTO_TCP, not the default 0: asyncio turns on TCP_NODELAY only for accepted
    # sockets whose proto says TCP, and uvicorn relies on that (aiohttp and granian set it
    # themselves). Without it, keep-alive requests wait ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if stack == "aiohttp":
        sock.close()  # HttpServer binds its own (http_port 0: a free port)
        await serve_kiln(core, settings, handler)
    elif stack == "aiohttp-lowlevel":
        await serve_aiohttp_lowlevel(handle, sock)
    elif stack.startswith("uvicorn"):
        await serve_uvicorn(asgi_app(handle), sock, stack.removeprefix("uvicorn-"))
    elif stack == "starlette":
        await serve_uvicorn(starlette_app(handle), sock, "httptools")
    else:
        await serve_granian(handle, sock, stack.removeprefix("granian-"))
