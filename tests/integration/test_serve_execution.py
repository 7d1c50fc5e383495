"""`--execution loop`: engines computing on the event loop answer exactly what the worker
thread does, batch concurrent requests, and keep statistics and the traffic hook exact.

A real server on port 0 (`grpc_harness.running_server`) and the stock Triton client sending
concurrent requests (async_infer); outputs compared with the in-process engine.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import INPUT, OUTPUT, images, reference_outputs, register
from tests.integration.grpc_harness import running_server as serving

REQUESTS = 48


@pytest.mark.parametrize("execution", ["loop", "thread"])
def test_concurrent_requests_are_answered_exactly_and_counted_once(
    tmp_path: Path, execution: str
) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    sent = {f"r{i}": images(1, seed=i) for i in range(REQUESTS)}
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with serving(home, models=("digits",), execution=execution) as server, server.client() as c:
        for request_id, x in sent.items():
            tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            c.async_infer(
                "digits", [tensor], callback=lambda result, error: results.put((result, error)),
                request_id=request_id, client_timeout=30,
            )  # fmt: skip
        answers = [results.get(timeout=60) for _ in sent]
        stats = c.get_inference_statistics("digits", as_json=True)["model_stats"][0]
        expected = {i: reference_outputs(server.registry, "digits", 1, x) for i, x in sent.items()}
        traffic = list(server.traffic)
    assert [error for _, error in answers] == [None] * REQUESTS
    for result, _ in answers:
        request_id = result.get_response().id
        np.testing.assert_allclose(result.as_numpy(OUTPUT), expected[request_id], atol=1e-5)
    assert int(stats["inference_count"]) == REQUESTS  # warm-up runs are not counted
    assert 1 <= int(stats["execution_count"]) <= REQUESTS
    rows = sum(
        int(b["compute_infer"]["count"]) * int(b["batch_size"]) for b in stats["batch_stats"]
    )
    assert rows == REQUESTS
    assert sorted(e.request.id for e in traffic) == sorted(sent)
    assert all(e.error is None and e.timings is not None for e in traffic)
