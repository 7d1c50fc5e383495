"""Rollouts in the BentoML service (`bentoml serve` subprocess, real registry, tiny ONNX models):
shadow answers are logged under the ids the client got, canary rows carry their route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

import kiln.registry
from kiln.errors import KilnError
from kiln.settings import Settings
from kiln.traffic import scan_traffic
from tests.conftest import wait_until
from tests.integration.bento_harness import bento_serve
from tests.integration.grpc_harness import images, register

pytestmark = pytest.mark.slow


def _predict(url: str, rows: int) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{url}/predict", json={"inputs": images(rows, seed=rows).tolist()}, timeout=30
    )
    assert response.status_code == 200, response.text
    answers: list[dict[str, Any]] = response.json()
    return answers


def _logged(home: Path, ids: list[str]) -> pl.DataFrame:
    try:
        frame = scan_traffic(home, "digits").frame.collect()
    except KilnError:  # nothing written yet
        schema = {"request_id": pl.String, "route": pl.String, "version": pl.Int64}
        return pl.DataFrame(schema=schema)
    return frame.filter(frame["request_id"].is_in(ids))


def test_shadow_rows_are_logged_and_canary_rows_carry_their_route(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
        register(registry, tmp_path, "digits", seed=2, alias="candidate")
        registry.set_rollout("digits", "shadow", reason="test")
        env = {
            "KILN_HOME": str(home),
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "KILN_MODEL": "digits",
            "KILN_BENTO_POLL_INTERVAL_S": "0.1",
            "KILN_THREADS": "1",
            "KILN_TRAFFIC_FLUSH_INTERVAL_S": "0.2",
        }
        with bento_serve("kiln.serving.bento:KilnService", env) as url:

            def loaded_versions() -> list[int]:
                info = httpx.post(f"{url}/model_info", json={}, timeout=10).json()
                return list(info["versions"])

            assert wait_until(lambda: loaded_versions() == [1, 2], 60)

            answers = _predict(url, 3) + _predict(url, 1)
            assert {a["version"] for a in answers} == {1}  # clients see production only
            ids = [a["request_id"] for a in answers]
            assert len(set(ids)) == len(ids)

            def shadowed() -> bool:
                rows = _logged(home, ids)
                return sorted(rows.filter(rows["route"] == "shadow")["request_id"]) == sorted(ids)

            assert wait_until(shadowed, 60)
            rows = _logged(home, ids)
            assert set(rows.filter(rows["route"] == "shadow")["version"]) == {2}
            primary = rows.filter(rows["route"] == "primary")
            assert sorted(primary["request_id"]) == sorted(ids)
            assert set(primary["version"]) == {1}

            registry.set_rollout("digits", "canary", percent=100, reason="test")
            assert wait_until(lambda: {a["version"] for a in _predict(url, 1)} == {2}, 60)
            canary = [a["request_id"] for a in _predict(url, 2)]

            def canary_logged() -> bool:
                rows = _logged(home, canary)
                return rows.height == 2 and set(rows["route"]) == {"canary"}

            assert wait_until(canary_logged, 60)
            assert set(_logged(home, canary)["version"]) == {2}
