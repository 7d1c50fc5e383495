"""The grpc.aio server: the inference and feedback services, health, reflection, TLS, token.

    core = ServingCore(repository, settings)
    await core.start(settings.models)
    server = GrpcServer(core, settings)
    port = await server.start()
    ...
    await server.stop()          # stop accepting, finish in-flight calls, then drain the core

Health (`grpc.health.v1`) reports the whole server under "" (SERVING while ServerReady is
true: every model it was started with is loaded and ready), each service name, and each
served model under its name ("digits": SERVING while a version of it takes requests) and under
"name:version" per loaded version.

Every service is registered by `registration.add`: bytes that are no request message answer
INVALID_ARGUMENT, and methods the servicer does not implement UNIMPLEMENTED, saying so.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from kiln.serving.core import ServingCore
from kiln.serving.grpc.auth import TokenInterceptor
from kiln.serving.grpc.generated import POOL
from kiln.serving.grpc.generated.inference import grpc_service_pb2
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2, feedback_pb2_grpc
from kiln.serving.grpc.registration import add, add_inference_service
from kiln.serving.grpc.servicer import FeedbackServicer, InferenceServicer
from kiln.serving.listening import listen_problem
from kiln.serving.settings import ServingSettings
from kiln.serving.table import ModelState

log = logging.getLogger("kiln.serving.grpc")

SERVICES = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)

# Reflection answers from Kiln's descriptor pool (see proto/generate.py); health and
# reflection register in protobuf's default pool, so add their files to Kiln's as well.
for _file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
    try:
        POOL.FindFileByName(_file.name)
    except KeyError:
        POOL.AddSerializedFile(_file.serialized_pb)


class GrpcServer:
    """One grpc.aio server over one `ServingCore`."""

    def __init__(
        self, core: ServingCore, settings: ServingSettings, *, reuse_port: bool = False
    ) -> None:
        self.core = core
        self.settings = settings
        self.reuse_port = reuse_port
        """Bind with SO_REUSEPORT, sharing the port with the other workers of `kiln serve
        --workers` (`kiln.serving.workers`). Off for one server: a second server started on
        the same port by mistake then fails to start instead of silently taking half the
        connections."""
        self.port: int | None = None
        self._health = health.aio.HealthServicer()
        self._health_updates: set[asyncio.Task[None]] = set()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind, start serving and return the port (the real one when the setting is 0)."""
        s = self.settings
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", int(self.reuse_port)),
        ]
        interceptors = []
        if s.token:
            interceptors.append(TokenInterceptor(s.token, protect_inference=s.token_for_inference))
        server = grpc.aio.server(options=options, interceptors=interceptors)
        add_inference_service(InferenceServicer(self.core), server)
        add(
            server,
            feedback_pb2_grpc.add_FeedbackServicer_to_server,
            FeedbackServicer(self.core),
            feedback_pb2_grpc.FeedbackServicer,
        )
        add(server, health_pb2_grpc.add_HealthServicer_to_server, self._health)
        # What `reflection.enable_server_reflection` registers on a grpc.aio server.
        add(
            server,
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
            reflection.aio.ReflectionServicer(SERVICES, pool=POOL),
        )
        address = f"{s.host}:{s.port}"
        try:
            if s.tls_cert and s.tls_key:
                credentials = grpc.ssl_server_credentials(
                    [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())]
                )
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:  # grpc says only "Failed to bind to address"
            port = 0
        if not port:
            raise listen_problem(s.host, s.port, "the gRPC", "--port")
        await server.start()
        self._server, self.port = server, int(port)
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", *SERVICES[:2]):
            await self._health.set(name, serving)
        self.core.add_listener(self._model_state_changed)
        return int(port)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace` seconds), stop the core."""
        await self._health.enter_graceful_shutdown()
        drain = self.settings.drain_timeout_s if grace is None else grace
        # Refuse new inference with UNAVAILABLE while calls the server already received are
        # dispatched and answered; stopping gRPC at once would cancel those instead.
        self.core.refuse_new()
        await self.core.drained(timeout_s=drain)
        if self._server is not None:
            await self._server.stop(drain)
        await self.core.stop()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def _model_state_changed(self, name: str, version: int, state: ModelState) -> None:
        # Runs inside the core's state change; look at the table once that change is complete.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._sync_health, name, version, state)

    def _sync_health(self, name: str, version: int, state: ModelState) -> None:
        status = health_pb2.HealthCheckResponse
        if self.core.lifecycle.stopping:
            return  # enter_graceful_shutdown said NOT_SERVING for everything
        model = status.SERVING if self.core.model_ready(name) else status.NOT_SERVING
        one = status.SERVING if state is ModelState.READY else status.NOT_SERVING
        whole = status.SERVING if self.core.ready else status.NOT_SERVING
        for service, value in ((name, model), (f"{name}:{version}", one), ("", whole)):
            task = asyncio.ensure_future(self._health.set(service, value))
            self._health_updates.add(task)
            task.add_done_callback(self._health_updates.discard)
