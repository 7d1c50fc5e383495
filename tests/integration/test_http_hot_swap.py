"""Hot swap under load over HTTP: tritonclient.http clients keep sending while the served alias
moves and moves back; no request fails (test_grpc_hot_swap.py's test, over KServe v2 REST).

The same server answers gRPC too: one client on each transport runs beside the HTTP ones, so a
swap is seen the same way by both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import images, reference_outputs, running_server
from tests.integration.http_harness import digits_home
from tests.integration.load import BackgroundLoad
from tests.integration.test_grpc_hot_swap import _changes

CLIENTS = 4
PER_PHASE = 100
"""Answers each phase waits for (bounded in time too: `BackgroundLoad.wait_until`'s 60 s)."""


def test_alias_moves_under_http_load_without_a_failed_request(tmp_path: Path) -> None:
    home = digits_home(tmp_path, versions=2)
    x = images(1, seed=3)
    with (
        running_server(home, models=("digits",), poll_interval_s=0.05) as server,
        kiln.registry.open(settings=Settings(home=home)) as registry,
        BackgroundLoad(server.http_url, x, clients=CLIENTS, http=True) as load,
        BackgroundLoad(server.url, x, clients=1) as grpc_load,
    ):
        load.wait_until(
            lambda: load.total() >= PER_PHASE and load.latest() == grpc_load.latest() == {"1"}
        )

        registry.promote("digits:2", "production", gates=[], reason="hot swap test")
        load.wait_until(lambda: load.latest() == {"2"} and grpc_load.latest() == {"2"})
        swapped_at = load.total()
        load.wait_until(lambda: load.total() >= swapped_at + PER_PHASE)

        registry.rollback("digits", reason="hot swap test")
        load.wait_until(lambda: load.latest() == {"1"} and grpc_load.latest() == {"1"})
        rolled_back_at = load.total()
        load.wait_until(lambda: load.total() >= rolled_back_at + PER_PHASE)
        expected = {v: reference_outputs(registry, "digits", int(v), x) for v in ("1", "2")}

    assert load.errors == [] and grpc_load.errors == []
    for seen in [*load.versions, *grpc_load.versions]:
        assert _changes(seen) == ["1", "2", "1"]
    assert set(load.outputs) == {"1", "2"}
    for version, outputs in load.outputs.items():
        assert outputs == grpc_load.outputs[version]  # both transports, bit for bit
        assert len(outputs) == 1
        got = np.frombuffer(next(iter(outputs)), np.float32).reshape(1, 10)
        np.testing.assert_allclose(got, expected[version], atol=1e-5)
