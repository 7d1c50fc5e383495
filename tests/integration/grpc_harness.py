"""Support for the gRPC server tests: small real models in a real registry, and a real
`kiln serve` stack (registry, core, grpc.aio server, metrics) on port 0 in a background thread.

The stack runs on its own event loop thread so that tests can call it with the stock,
synchronous `tritonclient.grpc` client from the test's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper

import kiln.registry
from kiln.registry import ModelVersion, Registry
from kiln.serving.messages import Feedback, TrafficEvent
from kiln.serving.ready import Endpoints
from kiln.serving.runner import serve
from kiln.serving.settings import ServingSettings
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln_engines import load

INPUT, OUTPUT = "input", "logits"
IMAGE = (1, 28, 28)
ONE_THREAD = {"KILN_THREADS": "1"}
"""The environment for `kiln.serving.launcher.kiln_serve` in tests: one engine thread, as the
in-process servers here use (the machines running the tests have few cores)."""


def write_classifier(path: Path, seed: int) -> Path:
    """The shape of the trainer's digit classifier: float32 (N,1,28,28) -> logits (N,10).

    A linear layer with weights drawn from `seed`, so each version computes something else.
    """
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((784, 10)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [INPUT], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], [OUTPUT]),
        ],
        "classifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *IMAGE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def register(
    registry: Registry, workdir: Path, name: str, seed: int, alias: str | None = "production"
) -> ModelVersion:
    """Register a version of `name` with an ONNX artifact; point `alias` at it."""
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / f"{name}-{seed}.safetensors"
    checkpoint.write_bytes(f"checkpoint of {name} seed {seed}".encode())
    version = registry.register_version(
        name, checkpoint=checkpoint, config={"seed": seed}, metrics={}
    )
    onnx_path = write_classifier(workdir / f"{name}-{seed}.onnx", seed)
    registry.add_artifact(name, version.version, kind="onnx", path=onnx_path)
    if alias is not None:
        registry.promote(version.ref, alias, gates=[], reason="test")
    return version


def reference_outputs(registry: Registry, name: str, version: int, x: np.ndarray) -> np.ndarray:
    """What the in-process engine computes for `x` (the registry's artifact, loaded directly)."""
    artifact = registry.artifacts(name, version, "onnx")[0]
    with load(registry.artifact_file(artifact), "onnx") as engine:
        return engine.infer({INPUT: x})[OUTPUT]


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *IMAGE), dtype=np.float32)


@dataclass
class RunningServer:
    """A started server and what the test may look at."""

    endpoints: Endpoints
    registry: Registry
    traffic: list[TrafficEvent] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.endpoints.grpc_port}"

    @property
    def http_url(self) -> str:
        """`host:port` of the HTTP endpoint (tritonclient.http's form)."""
        return f"127.0.0.1:{self.endpoints.http_port}"

    def client(self, **kwargs: Any) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url, **kwargs)


@contextmanager
def running_server(
    home: Path,
    *,
    hooks: bool = True,
    also: Callable[[TrafficEvent], None] | None = None,
    sink: TrafficSink | None = None,
    **settings: Any,
) -> Iterator[RunningServer]:
    """Serve `home`'s registry on port 0 in a background thread until the block ends.

    With `hooks`, traffic events and feedback are collected on the `RunningServer`; `also`
    receives each traffic event too (a `TrafficSink.on_request`, say). With `sink`, the real
    traffic and feedback store are the hooks as in `kiln serve` (the caller closes it)."""
    kiln_settings = Settings(home=home)
    registry = kiln.registry.open(settings=kiln_settings)
    serving = ServingSettings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "http_port": 0,
            "metrics_port": 0,
            "threads": 1,
            **settings,
        }
    )
    ready = threading.Event()
    failure: list[BaseException] = []
    state: dict[str, Any] = {}
    server: RunningServer | None = None

    def on_ready(endpoints: Endpoints) -> None:
        nonlocal server
        server = RunningServer(endpoints, registry)
        ready.set()

    def traffic(event: TrafficEvent) -> None:
        assert server is not None
        server.traffic.append(event)
        if also is not None:
            also(event)
        if sink is not None:
            sink.on_request(event)

    def feedback(items: Any) -> None:
        assert server is not None
        if sink is not None:
            sink.on_feedback(items)  # raises when its buffer is full: nothing is collected
        server.feedback.extend(items)

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = asyncio.Event()
        await serve(
            serving,
            kiln_settings,
            on_ready=on_ready,
            stop=state["stop"],
            traffic_hook=traffic if hooks or sink else None,
            feedback_hook=feedback if hooks or sink else None,
            handle_signals=False,
        )

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="kiln-test-server", daemon=True)
    thread.start()
    ready.wait(120)
    if failure:
        raise failure[0]
    assert server is not None, "the server did not become ready in 120 s"
    try:
        yield server
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(60)
        registry.close()
        if failure:
            raise failure[0]
