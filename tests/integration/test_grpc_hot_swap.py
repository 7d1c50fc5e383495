"""Hot swap under load: clients keep sending while the served alias moves; nothing fails.

Eight client threads send requests back to back with the stock Triton client, with engines
computing on their worker thread and on the event loop (`--execution`). Meanwhile the
registry's `production` alias is promoted from version 1 to version 2, then rolled back. Every
request must succeed, each client must see versions change only in the order the alias moved,
every answer must be exactly what its version's engine computes, and the version that is no
longer served must be unloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

import kiln.registry
from kiln.settings import Settings
from tests.conftest import wait_until
from tests.integration.grpc_harness import (
    INPUT,
    images,
    reference_outputs,
    register,
    running_server,
)
from tests.integration.load import BackgroundLoad

CLIENTS = 8


def _changes(seen: list[str]) -> list[str]:
    return [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]


@pytest.mark.parametrize("execution", ["thread", "loop"])
def test_alias_moves_under_load_without_a_failed_request(tmp_path: Path, execution: str) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
        register(registry, tmp_path, "digits", seed=2, alias=None)
    x = images(1, seed=3)
    with (
        running_server(
            home, models=("digits",), poll_interval_s=0.05, execution=execution
        ) as server,
        kiln.registry.open(settings=Settings(home=home)) as registry,
        BackgroundLoad(server.url, x, clients=CLIENTS) as load,
    ):
        load.wait_until(lambda: load.total() >= 200 and load.latest() == {"1"})

        registry.promote("digits:2", "production", gates=[], reason="hot swap test")
        load.wait_until(lambda: load.latest() == {"2"})
        swapped_at = load.total()
        load.wait_until(lambda: load.total() >= swapped_at + 200)

        registry.rollback("digits", reason="hot swap test")
        load.wait_until(lambda: load.latest() == {"1"})
        rolled_back_at = load.total()
        load.wait_until(lambda: load.total() >= rolled_back_at + 200)
        load.stop.set()
        expected = {v: reference_outputs(registry, "digits", int(v), x) for v in ("1", "2")}

    assert load.errors == []
    for seen in load.versions:
        assert _changes(seen) == ["1", "2", "1"]
    assert set(load.outputs) == {"1", "2"}
    for version, outputs in load.outputs.items():
        assert len(outputs) == 1  # every answer of a version is the same, bit for bit
        got = np.frombuffer(next(iter(outputs)), np.float32).reshape(1, 10)
        np.testing.assert_allclose(got, expected[version], atol=1e-5)


def test_the_old_version_is_unloaded_after_the_swap(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
        register(registry, tmp_path, "digits", seed=2, alias=None)
        with (
            running_server(home, models=("digits",), poll_interval_s=0.05) as server,
            server.client() as client,
        ):
            assert client.is_model_ready("digits", "1")
            registry.promote("digits:2", "production", gates=[], reason="test")
            assert wait_until(lambda: not client.is_model_ready("digits", "1"), 60, 0.02)
            assert client.is_model_ready("digits", "2")
            index = client.get_model_repository_index(as_json=True)["models"]
            assert index == [{"name": "digits", "version": "2", "state": "READY"}]
            stats = client.get_inference_statistics("digits").model_stats
            assert [s.version for s in stats] == ["2"]


def test_a_version_that_cannot_load_leaves_the_old_one_serving(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
        checkpoint = tmp_path / "only-a-checkpoint.safetensors"
        checkpoint.write_bytes(b"no engine")
        broken = registry.register_version("digits", checkpoint=checkpoint, config={}, metrics={})
        with (
            running_server(home, models=("digits",), poll_interval_s=0.05) as server,
            server.client() as client,
        ):
            registry.promote(broken.ref, "production", gates=[], reason="no engine to serve")
            tensor = triton.InferInput(INPUT, [1, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(images(1))
            served: set[str] = set()

            def failed_swap_reported() -> bool:
                # Keep asking while the watcher tries: every answer must come from version 1.
                served.add(client.infer("digits", [tensor]).get_response().model_version)
                return "reason" in _index_entry(client)

            assert wait_until(failed_swap_reported, 60, 0.02)
            assert served == {"1"}
            assert "has no compiled engine" in _index_entry(client)["reason"]
            assert client.is_model_ready("digits", "1")


def _index_entry(client: triton.InferenceServerClient) -> dict[str, str]:
    entries = client.get_model_repository_index(as_json=True)["models"]
    return next(e for e in entries if e["name"] == "digits")
