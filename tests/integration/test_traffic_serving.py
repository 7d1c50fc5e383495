"""Traffic logging through the real gRPC server: N requests give exactly N rows, feedback sent
over kiln.v1 joins them, and a server stopped with SIGTERM under load has logged every request
it answered.

The first test runs the real stack (`kiln.serving.runner.serve`: registry, core,
grpc.aio) in-process with `TrafficSink` as its hooks; the SIGTERM test runs `kiln serve` itself.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import polars as pl
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

import kiln.registry
from kiln.evaluate import evaluate_traffic
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2, feedback_pb2_grpc
from kiln.serving.launcher import kiln_serve
from kiln.serving.ready import Endpoints
from kiln.serving.runner import serve
from kiln.serving.settings import ServingSettings
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from kiln.traffic import TrafficSettings, Window, scan_feedback, scan_traffic
from tests.integration.grpc_harness import INPUT, ONE_THREAD, OUTPUT, images, register
from tests.integration.load import BackgroundLoad


@dataclass
class Server:
    port: int
    sink: TrafficSink


@contextmanager
def logging_server(home: Path) -> Iterator[Server]:
    """The gRPC server on port 0 in a thread, logging to `home`; closes the sink on exit."""
    sink = TrafficSink(home, TrafficSettings(flush_interval_s=60))
    ready: queue.Queue[Endpoints | BaseException] = queue.Queue()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await serve(
            ServingSettings(host="127.0.0.1", port=0, http_port=0, metrics_port=None, threads=1),
            Settings(home=home),
            on_ready=ready.put,
            stop=state["stop"],
            traffic_hook=sink.on_request,
            feedback_hook=sink.on_feedback,
            handle_signals=False,
        )

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            ready.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started = ready.get(timeout=120)
    if isinstance(started, BaseException):
        raise started
    try:
        yield Server(started.grpc_port, sink)
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(60)
        assert sink.close(60)


def tensor(x: np.ndarray) -> triton.InferInput:
    t = triton.InferInput(INPUT, list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return t


def test_n_requests_give_n_rows_and_feedback_joins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    answers: dict[str, int] = {}
    with logging_server(home) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            for i in range(40):
                result = client.infer("digits", [tensor(images(1, seed=i))], request_id=f"q{i}")
                answers[f"q{i}"] = int(result.as_numpy(OUTPUT)[0].argmax())
            client.infer("digits", [tensor(images(3, seed=99))], request_id="three")
            for i in range(4):  # wrong shape: refused, and logged as such
                with pytest.raises(InferenceServerException):
                    client.infer(
                        "digits", [tensor(np.zeros((1, 5), np.float32))], request_id=f"bad{i}"
                    )
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = feedback_pb2_grpc.FeedbackStub(channel)
            # Labels: right for q0-q9, wrong for q10-q14, and one for a request never made.
            items = [
                feedback_pb2.FeedbackItem(request_id=rid, label=answers[rid], model_name="digits")
                for rid in (f"q{i}" for i in range(10))
            ]
            items += [
                feedback_pb2.FeedbackItem(request_id=f"q{i}", label=(answers[f"q{i}"] + 1) % 10)
                for i in range(10, 15)
            ]
            items.append(feedback_pb2.FeedbackItem(request_id="never-sent", label=3))
            reply = stub.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(items=items))
            assert reply.accepted == 16
    window = Window(
        datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(minutes=1)
    )

    rows = scan_traffic(home, "digits", window).frame.collect()
    assert rows.height == 45  # exactly one row per request, failures included
    assert set(rows["request_id"]) == {*answers, "three", *(f"bad{i}" for i in range(4))}
    ok = rows.filter(pl.col("status") == "ok")
    assert ok.height == 41 and set(ok["version"]) == {1}
    by_id = dict(zip(ok["request_id"], ok["prediction"], strict=True))
    assert all(by_id[rid] == answers[rid] for rid in answers)
    assert ok.filter(pl.col("request_id") == "three")["input_shape"].to_list() == [[3, 1, 28, 28]]
    bad = rows.filter(pl.col("status") != "ok")
    assert set(bad["status"]) == {"invalid_argument"} and bad["error"].null_count() == 0
    assert scan_feedback(home, window).frame.collect().height == 16

    report = evaluate_traffic(home, "digits", window, {}).to_dict()
    assert report["labelled"] == 15 and report["feedback"]["unmatched"] == 1
    (primary,) = [a for a in report["accuracy"] if a["version"] == 1]
    assert primary["accuracy"] == pytest.approx(10 / 15)


def test_sigterm_under_load_logs_every_answered_request(tmp_path: Path) -> None:
    """`kiln serve` as users run it (traffic logging is on by default)."""
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    x = images(1, seed=5)
    with kiln_serve("--models", "digits", home=home, env=ONE_THREAD, metrics=False) as served:
        with BackgroundLoad(served.url, x, clients=8, request_ids=True, until_refused=True) as load:
            load.wait_until(lambda: load.total() >= 300, 120)
            served.process.send_signal(signal.SIGTERM)
            assert served.process.wait(60) == 0, served.output()[-3000:]
            load.join(60)  # each client ends at its first refused request
        answered = load.answered

    rows = scan_traffic(home, "digits").frame.collect()
    logged_ok = set(rows.filter(pl.col("status") == "ok")["request_id"])
    assert set(answered) <= logged_ok  # every answer a client received was logged
    assert rows["request_id"].n_unique() == rows.height
    assert len(logged_ok) - len(answered) <= 8  # at most one in-flight answer per client lost
