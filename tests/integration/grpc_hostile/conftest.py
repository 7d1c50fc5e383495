"""One server for every hostile-client test: default settings (model control off), a registry
with `digits` (served) and `letters` (registered, not served), the real traffic store as its
hooks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

import kiln.registry
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2_grpc
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import TrafficSettings
from tests.integration.grpc_harness import RunningServer, register, running_server
from tests.integration.grpc_hostile.calls import FEEDBACK_LIMIT


@pytest.fixture(scope="package")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    with kiln.registry.open(settings=Settings(home=root / "home")) as registry:
        register(registry, root, "digits", seed=1)
        register(registry, root, "letters", seed=2)
    return root / "home"


@pytest.fixture(scope="package")
def sink(home: Path) -> Iterator[TrafficSink]:
    opened = TrafficSink(home, TrafficSettings(flush_interval_s=60))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="package")
def server(home: Path, sink: TrafficSink) -> Iterator[RunningServer]:
    """Default settings (model control off), the real traffic store as its hooks."""
    with running_server(
        home, models=("digits",), sink=sink, max_feedback_items=FEEDBACK_LIMIT
    ) as running:
        yield running


@pytest.fixture(scope="package")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.url) as opened:  # the client defaults: 4 MB answers
        yield opened


@pytest.fixture(scope="package")
def stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="package")
def feedback(channel: grpc.Channel) -> feedback_pb2_grpc.FeedbackStub:
    return feedback_pb2_grpc.FeedbackStub(channel)
