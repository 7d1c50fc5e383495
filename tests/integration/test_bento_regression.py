"""The BentoML service serving a regressor registered from an ONNX file: `/predict` answers
with the predicted values, `/feedback` takes true values, and a model with two inputs (the
alias moved to one while serving) is refused per request, saying to use `kiln serve`.
One real `bentoml serve` for the whole module."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import kiln.registry
from kiln.compile import CompileOptions, compile_version
from kiln.errors import KilnError
from kiln.registry import Registry
from kiln.settings import Settings
from kiln.sources import RegisterOptions, SourceSpec, register_source
from kiln.traffic import scan_traffic
from tests.conftest import wait_until
from tests.integration.bento_harness import bento_serve
from tests.integration.regressors import write_regressor

pytestmark = pytest.mark.slow

WEIGHTS = np.linspace(-1.0, 1.0, 10).astype(np.float32)
BIAS = 150.0


@dataclass
class Served:
    url: str
    home: Path


def _two_input_regressor(path: Path) -> Path:
    """a (N, 10) and b (N, 10) float32 -> prediction (N, 1) = (a + b) @ w."""
    w = numpy_helper.from_array(WEIGHTS.reshape(10, 1), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["ab"]),
         helper.make_node("MatMul", ["ab", "W"], ["prediction"])],
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])],
        [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _register(registry: Registry, settings: Settings, path: Path) -> str:
    version = register_source(
        registry, "sugar", SourceSpec("onnx", path), RegisterOptions(task="regression")
    )
    options = CompileOptions(measure_seconds=0.0, parity_samples=64)
    compile_version(registry, version.ref, options, settings)
    return version.ref


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("kiln-home")
    files = tmp_path_factory.mktemp("models")
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        first = _register(registry, settings, write_regressor(files / "one.onnx", WEIGHTS, BIAS))
        _register(registry, settings, _two_input_regressor(files / "two.onnx"))
        registry.promote(first, "production", reason="first")
    env = {
        "KILN_HOME": str(home),
        "KILN_MODEL": "sugar",
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")),
        "KILN_BENTO_POLL_INTERVAL_S": "0.2",
        "KILN_THREADS": "1",
        "KILN_TRAFFIC_FLUSH_INTERVAL_S": "0.2",
    }
    with bento_serve("kiln.serving.bento:KilnService", env, log_path=home / "serve.log") as url:
        yield Served(url, home)


def _post(url: str, route: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/{route}", json=body, timeout=30)


def test_predict_answers_a_regressor_with_its_values(served: Served) -> None:
    x = np.random.default_rng(0).standard_normal((5, 10)).astype(np.float32)
    response = _post(served.url, "predict", {"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == 5
    for answer in answers:
        assert set(answer) == {"request_id", "model", "version", "output", "prediction"}
        assert (answer["model"], answer["version"], answer["output"]) == ("sugar", 1, "prediction")
    np.testing.assert_allclose(
        [a["prediction"] for a in answers], x @ WEIGHTS.reshape(10, 1) + BIAS, rtol=1e-5
    )
    info = _post(served.url, "model_info", {}).json()
    assert (info["task"], info["class_names"]) == ("regression", [])
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    image = httpx.post(
        f"{served.url}/classify_image", files={"image": ("x.png", png.getvalue())}, timeout=30
    )
    assert image.status_code == 400
    assert "'sugar' is a regression model" in image.text and "/predict" in image.text

    # True values come back as feedback, by the answers' request ids; a label is refused.
    items = [{"request_id": answers[0]["request_id"], "value": 151.5},
             {"request_id": answers[1]["request_id"], "label": 1}]  # fmt: skip
    receipt = _post(served.url, "feedback", {"items": items})
    assert receipt.status_code == 200, receipt.text
    assert receipt.json()["accepted"] == 1
    [refused] = receipt.json()["rejected"]
    assert refused["index"] == 1 and "value" in refused["reason"]

    # Each answered row is logged with its value where a one-sample request's scores are.
    def logged() -> dict[str, float]:
        try:
            frame = scan_traffic(served.home, "sugar").frame.collect()
        except KilnError:  # nothing flushed yet
            return {}
        return {
            r: scores[0] for r, scores in zip(frame["request_id"], frame["scores"], strict=True)
        }

    assert wait_until(lambda: len(logged()) >= 5, timeout=60)
    rows = logged()
    for answer in answers:
        assert rows[answer["request_id"]] == pytest.approx(answer["prediction"][0], rel=1e-6)


def test_a_model_with_two_inputs_is_refused_saying_what_serves_it(served: Served) -> None:
    with kiln.registry.open(settings=Settings(home=served.home)) as registry:
        registry.promote("sugar:2", "production", reason="two inputs", gates=[])
    assert wait_until(
        lambda: _post(served.url, "model_info", {}).json().get("version") == 2, timeout=60
    )
    for route, body in (
        ("predict", {"inputs": [[0.0] * 10]}),
        ("infer", {"inputs": [[0.0] * 10], "version": "2"}),
    ):
        response = _post(served.url, route, body)
        assert response.status_code == 400, (route, response.text)
        message = " ".join(response.text.split())
        assert "'sugar' takes 2 inputs (a, b)" in message, message
        assert "one input array per request" in message and "kiln serve" in message
