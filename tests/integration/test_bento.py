"""The BentoML service as users run it: `bentoml serve` subprocesses, BentoML's HTTP client and
plain HTTP JSON, hot swap on promotion, bad input, and a built Bento serving on its own."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

import kiln.registry
from kiln.data import load_dataset
from kiln.errors import KilnError
from kiln.registry import ArtifactKind
from kiln.settings import Settings
from kiln_engines import load
from tests.conftest import wait_until
from tests.integration.bento_harness import BENTOML, REPO, bento_serve, train_and_register

pytestmark = pytest.mark.slow


@dataclass
class World:
    home: Path
    env: dict[str, str]
    x: np.ndarray

    def expected(self, version: int, x: np.ndarray) -> np.ndarray:
        """Logits of the registered onnxruntime engine, run in this process."""
        with kiln.registry.open(settings=Settings(home=self.home)) as registry:
            artifact = registry.artifacts("digits", version, kind=ArtifactKind.ONNXRUNTIME)[0]
            engine = load(registry.artifact_file(artifact), "onnxruntime")
        try:
            return next(iter(engine.infer({"input": x}).values()))
        finally:
            engine.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("kiln-home")
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        v1 = train_and_register(registry, settings, "digits", seed=1)
        train_and_register(registry, settings, "digits", seed=2)
        registry.promote(f"digits:{v1}", "production", reason="first")
    env = {
        "KILN_HOME": str(home),
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")),
        "KILN_BENTO_POLL_INTERVAL_S": "0.2",
        "KILN_THREADS": "1",
        "KILN_TRAFFIC_FLUSH_INTERVAL_S": "0.2",
    }
    x = load_dataset("digits", Settings()).test.x[:6]
    return World(home, env, x)


@pytest.fixture(scope="module")
def url(world: World) -> Iterator[str]:
    log = world.home / "bentoml-serve.log"
    with bento_serve("kiln.serving.bento:KilnService", world.env, log_path=log) as served:
        yield served


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _post(url: str, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/{route}", json=body, timeout=30)


def test_bentoml_client_matches_the_in_process_engine(url: str, world: World) -> None:
    expected = _softmax(world.expected(1, world.x))
    with bentoml.SyncHTTPClient(url) as client:
        answers = client.predict(inputs=world.x)
    assert [a["prediction"] for a in answers] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([a["scores"] for a in answers], expected, atol=1e-5)
    assert {a["version"] for a in answers} == {1}
    assert len({a["request_id"] for a in answers}) == len(answers)


def test_plain_http_json_matches_too(url: str, world: World) -> None:
    response = _post(url, "predict", {"inputs": world.x.tolist()})
    assert response.status_code == 200, response.text
    expected = world.expected(1, world.x).argmax(axis=1)
    assert [a["prediction"] for a in response.json()] == expected.tolist()
    assert response.json()[0]["label"] == str(expected[0])


def test_image_upload_is_preprocessed_like_training(url: str, world: World) -> None:
    pixels = np.round(world.x[0, 0] * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    response = httpx.post(
        f"{url}/classify_image", files={"image": ("digit.png", buf.getvalue(), "image/png")}
    )
    assert response.status_code == 200, response.text
    quantised = (pixels.astype(np.float32) / 255.0)[None, None]
    assert response.json()["prediction"] == int(world.expected(1, quantised).argmax())


@pytest.mark.parametrize(
    ("route", "body", "status", "message"),
    [
        ("predict", {"inputs": [[1.0, 2.0, 3.0]]}, 400, "this model takes (N, 1, 8, 8)"),
        ("predict", {"inputs": [[[["a"] * 8] * 8]]}, 400, "must be numbers"),
        ("predict", {"inputs": []}, 400, "inputs have shape (0,)"),
        ("infer", {"inputs": np.zeros((1, 1, 8, 8)).tolist(), "model": "nope"}, 404, "nope"),
        ("infer", {"inputs": np.zeros((1, 1, 8, 8)).tolist(), "version": "7"}, 404, "7"),
    ],
    ids=["shape", "dtype", "empty", "unknown-model", "unknown-version"],
)
def test_bad_input_gets_4xx_and_the_service_keeps_serving(
    url: str, world: World, route: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = _post(url, route, body)
    assert response.status_code == status, response.text
    assert message in response.text
    assert _post(url, "predict", {"inputs": world.x[:1].tolist()}).status_code == 200


def test_empty_batch_with_the_right_rank(url: str) -> None:
    response = _post(url, "predict", {"inputs": np.zeros((0, 1, 8, 8)).tolist()})
    assert response.status_code == 400
    assert "empty" in response.text or "shape" in response.text


def test_non_image_upload_is_a_400(url: str) -> None:
    response = httpx.post(
        f"{url}/classify_image", files={"image": ("notes.txt", b"not an image", "text/plain")}
    )
    assert response.status_code == 400, response.text
    assert "not a PNG or JPEG image" in response.text


def test_promotion_is_picked_up_without_restart(url: str, world: World) -> None:
    with kiln.registry.open(settings=Settings(home=world.home)) as registry:
        registry.promote("digits:2", "production", reason="test", force=True)
    deadline = time.monotonic() + 60
    versions: set[int] = set()
    while time.monotonic() < deadline:
        response = _post(url, "predict", {"inputs": world.x.tolist()})
        assert response.status_code == 200, response.text  # no request fails during the swap
        versions = {a["version"] for a in response.json()}
        if versions == {2}:
            break
    assert versions == {2}
    expected = world.expected(2, world.x).argmax(axis=1)
    assert [a["prediction"] for a in response.json()] == expected.tolist()


def test_built_bento_serves_without_a_registry(world: World, tmp_path: Path) -> None:
    env = {**os.environ, **world.env}
    export = subprocess.run(
        [str(Path(BENTOML).with_name("kiln")), "bento", "export", "digits:1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    tag = json.loads(export.stdout)["tag"]
    assert tag == "kiln-digits:v1"
    build = subprocess.run(
        [BENTOML, "build", "-f", "deploy/bentofile.yaml", ".", "--output", "tag"],
        cwd=REPO,
        env={**env, "KILN_BENTO_MODEL": tag},
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    bento_tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    listed = subprocess.run(
        [BENTOML, "get", bento_tag, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "kiln-digits" in listed.stdout
    # No registry: an empty KILN_HOME, and another working directory.
    bare = {**world.env, "KILN_HOME": str(tmp_path / "no-registry")}
    with bento_serve(bento_tag, bare, cwd=tmp_path) as served:
        response = _post(served, "predict", {"inputs": world.x.tolist()})
    assert response.status_code == 200, response.text
    expected = world.expected(1, world.x).argmax(axis=1)
    assert [a["prediction"] for a in response.json()] == expected.tolist()
    # It served from BentoML's store: no registry was created (its traffic log is there).
    assert not (tmp_path / "no-registry" / "registry.db").exists()


def test_every_answered_row_is_logged_and_feedback_joins(url: str, world: World) -> None:
    from kiln.traffic import scan_feedback, scan_traffic

    ids = []
    for i in range(5):
        response = _post(url, "predict", {"inputs": world.x[i : i + 1].tolist()})
        assert response.status_code == 200
        ids.append(response.json()[0]["request_id"])
    receipt = _post(url, "feedback", {"items": [{"request_id": r, "label": 3} for r in ids]})
    assert receipt.status_code == 200, receipt.text
    assert receipt.json()["accepted"] == 5

    # The service writes its buffer every flush interval; wait for the rows to appear.
    def rows() -> tuple[list[str], set[str]]:
        try:
            frame = scan_traffic(world.home, "digits").frame.collect()
        except KilnError:  # no traffic directory yet
            return [], set()
        logged = frame.filter(frame["request_id"].is_in(ids))["request_id"].to_list()
        labelled = set(scan_feedback(world.home).frame.collect()["request_id"].to_list())
        return logged, labelled

    assert wait_until(lambda: len(rows()[0]) == len(ids) and set(ids) <= rows()[1], 60)
    logged, _ = rows()
    assert sorted(logged) == sorted(ids)  # exactly one row per answered request


def test_feedback_values_are_refused_for_a_classifier_saying_what_to_send(url: str) -> None:
    items = [{"request_id": "v1", "value": 2.5}, {"request_id": "v2"}]
    receipt = _post(url, "feedback", {"items": items})
    assert receipt.status_code == 200, receipt.text
    body = receipt.json()
    assert body["accepted"] == 0
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert reasons[0] == (
        "the model is a classification model: send the true class index as label, not a "
        "value (got value 2.5)"
    )
    assert "neither a label nor a value" in reasons[1]


def test_kiln_serve_http_is_the_bentoml_service(world: World) -> None:
    kiln = str(Path(BENTOML).with_name("kiln"))
    command = [kiln, "serve", "--bento", "--models", "digits:1"]
    with bento_serve("", world.env, command=command) as served:
        response = _post(served, "predict", {"inputs": world.x[:2].tolist()})
    assert response.status_code == 200, response.text
    assert {a["version"] for a in response.json()} == {1}


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_inputs_are_refused_naming_the_input(
    url: str, world: World, value: float
) -> None:
    """The serving core's rule on both transports: INVALID_ARGUMENT (400) naming the input,
    unless KILN_SERVE_ALLOW_NONFINITE (test_bento_hostile.py runs a server with it)."""
    x = world.x[:1].copy()
    x[0, 0, 0, 0] = value
    body = json.dumps({"inputs": x.tolist()})  # as Python's json writes them: NaN, Infinity
    for route in ("predict", "infer"):
        response = httpx.post(
            f"{url}/{route}", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert "'input'" in response.text
        assert "finite" in response.text or "NaN" in response.text
