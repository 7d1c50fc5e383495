"""The HTTP/REST endpoint of `kiln serve`: aiohttp's server in the gRPC server's event loop.

    http = HttpServer(core, settings)
    port = await http.start()
    ...
    await http.stop()       # after the core drained (the gRPC server's stop drains it)

aiohttp parses, limits and writes; `HttpApp` (the transport-neutral handler) answers. Why
aiohttp (benchmarks/RESULTS.md, "HTTP stacks (issue 17)"): with a model behind the same
handler it is level with uvicorn + httptools and granian (uvicorn's default h11 parser is
clearly slower), though those two cost 10-30% less CPU with the model taken away; it won on
what a server beside grpc.aio needs: it starts on the running loop through a public API, binds
port 0 and reports the port, installs no signal handlers, enforces body and header limits and
de-compresses request bodies itself, and was already a pinned dependency.

Bodies beyond `max_message_bytes` answer 413 before they are read whole; request lines and
header fields are at most `MAX_LINE_BYTES`; gzip and deflate request bodies (`Content-Encoding`,
which tritonclient.http can send) are de-compressed by aiohttp, and the limit applies to what
they expand to; responses are compressed when the request's `Accept-Encoding` asks.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

from aiohttp import web

from kiln import __version__
from kiln.serving.core import ServingCore
from kiln.serving.http.app import HttpApp, HttpRequest, HttpResponse, error_response
from kiln.serving.listening import listen_problem
from kiln.serving.settings import ServingSettings

log = logging.getLogger("kiln.serving.http")

MAX_LINE_BYTES: Final = 8190
"""Longest request line and header field (aiohttp's default, Apache's and nginx's too)."""


class HttpServer:
    """One aiohttp server over one `ServingCore`, answering with `HttpApp`."""

    def __init__(
        self, core: ServingCore, settings: ServingSettings, *, reuse_port: bool = False
    ) -> None:
        self.core = core
        self.settings = settings
        self.reuse_port = reuse_port
        """SO_REUSEPORT, as `GrpcServer.reuse_port`: on for `kiln serve --workers`."""
        self.app = HttpApp(core, settings)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Bind, start serving and return the port (the real one when the setting is 0)."""
        s = self.settings
        assert s.http_port is not None, "start an HttpServer only when http_port is set"
        application = web.Application(client_max_size=s.max_message_bytes)
        application.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(
            application,
            access_log=None,  # one log line per request would cost more than the request
            handle_signals=False,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            shutdown_timeout=s.drain_timeout_s,
        )
        await runner.setup()
        context = None
        if s.tls_cert and s.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(s.tls_cert, s.tls_key)
        site = web.TCPSite(
            runner, s.host, s.http_port, ssl_context=context, reuse_port=self.reuse_port
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise listen_problem(
                s.host, s.http_port, "the HTTP", "--http-port (or --no-http)"
            ) from None
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and close the connections (requests in flight finish first)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.settings.max_message_bytes
            too_large = error_response(
                413,
                f"the request body is larger than {limit} bytes, the most this server takes; "
                "send fewer rows per request or raise --max-message-size",
            )
            return _aiohttp(too_large)
        except Exception as exc:  # a broken chunked body, bad gzip: the client's side
            log.info("could not read a request body: %s", exc)
            reason = f"{type(exc).__name__}: {exc}"[:200]
            broken = _aiohttp(error_response(400, f"the request body could not be read ({reason})"))
            # What is left of the body cannot be told from the next request: end the connection
            # after this answer, so the client does not send its next request into it.
            broken.force_close()
            return broken
        parsed = HttpRequest(request.method, request.path, request.headers, body)
        response = _aiohttp(await self.app.handle(parsed))
        if "accept-encoding" in request.headers:
            # gzip or deflate, whichever the client accepts (tritonclient.http's
            # response_compression_algorithm); only when asked: it costs the event loop.
            response.enable_compression()
        return response


SERVER: Final = (("server", f"kiln/{__version__}"),)
"""Instead of aiohttp's own `Server` header, which names the Python and aiohttp versions."""


def _aiohttp(response: HttpResponse) -> web.Response:
    headers = (*response.headers, *SERVER)
    return web.Response(status=response.status, body=response.body, headers=headers)
