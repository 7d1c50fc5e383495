"""The BentoML service with a text model, as users run it (`bentoml serve`, one start for the
module): `/classify_texts` takes `{"texts": [...]}`, tokenises with the version's own
tokenizer and answers like the in-process engine; bad strings and wrong endpoints are 400s
that say why; every answered string is a traffic row."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import kiln.registry
from kiln.settings import Settings
from kiln.text import TextTokenizer
from tests.integration.bento_harness import BENTOML, bento_serve
from tests.integration.text_serving_models import (
    CLASS_NAMES,
    engine_logits,
    register_text_version,
    tokenizer,
)

pytestmark = pytest.mark.slow

TEXTS = ["smart and very funny", "tedious, noisy and badly edited from start to finish"]


@dataclass
class Served:
    url: str
    home: Path
    tokenizer: TextTokenizer

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("kiln-home")
    text_tokenizer = tokenizer()
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register_text_version(registry, home.parent / "work", "reviews", text_tokenizer, seed=1)
    env = {
        "KILN_HOME": str(home),
        "KILN_MODEL": "reviews",
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")),
        "KILN_THREADS": "1",
        "KILN_TRAFFIC_FLUSH_INTERVAL_S": "0.2",
    }
    log = home / "bentoml-serve.log"
    with bento_serve("kiln.serving.bento:KilnService", env, log_path=log) as url:
        yield Served(url, home, text_tokenizer)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_texts_are_classified_as_the_engine_classifies_their_tokens(served: Served) -> None:
    response = served.post("/classify_texts", {"texts": TEXTS})
    assert response.status_code == 200, response.text
    answers = response.json()
    with kiln.registry.open(settings=Settings(home=served.home)) as registry:
        expected = _softmax(engine_logits(registry, "reviews", 1, served.tokenizer, TEXTS))
    assert [a["version"] for a in answers] == [1, 1]
    np.testing.assert_allclose([a["scores"] for a in answers], expected, atol=1e-5)
    assert [a["label"] for a in answers] == [CLASS_NAMES[i] for i in expected.argmax(axis=1)]
    assert len({a["request_id"] for a in answers}) == 2


def test_model_info_lists_the_string_input(served: Served) -> None:
    info = served.post("/model_info", {}).json()
    assert info["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}
    assert info["class_names"] == CLASS_NAMES


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"texts": ["fine", ""]}, "element 1 of 'text' is an empty string"),
        ({"texts": []}, "'texts' is empty"),
        ({"texts": ["x"] * 33}, "at most 32 (KILN_BENTO_MAX_BATCH_SIZE)"),
        ({"texts": ["x" * (64 * 1024 + 1)]}, "more than the limit of 65536 bytes"),
    ],
)
def test_bad_texts_are_400s_naming_the_problem(served: Served, body: object, says: str) -> None:
    response = served.post("/classify_texts", body)
    assert response.status_code == 400, response.text
    assert says in response.text
    assert served.post("/classify_texts", {"texts": ["still serving"]}).status_code == 200


def test_texts_that_are_not_strings_are_a_400(served: Served) -> None:
    response = served.post("/classify_texts", {"texts": [1, 2]})
    assert response.status_code == 400
    assert "texts" in response.text


def test_predict_and_classify_image_refuse_a_text_model_saying_where_to_send(
    served: Served,
) -> None:
    response = served.post("/predict", {"inputs": [[1, 2, 3]]})
    assert response.status_code == 400
    assert "is a text model" in response.text
    assert "/classify_texts" in response.text
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    image = {"image": ("review.png", png.getvalue(), "image/png")}
    response = httpx.post(f"{served.url}/classify_image", files=image, timeout=30)
    assert response.status_code == 400
    assert "/classify_texts" in response.text


def test_an_exported_text_version_carries_its_tokenizer(served: Served, tmp_path: Path) -> None:
    # What a built Bento serves from: BentoML's model store, with no registry.
    env = {
        **os.environ,
        "KILN_HOME": str(served.home),
        "BENTOML_HOME": str(tmp_path / "bentoml-home"),
    }
    kiln = str(Path(BENTOML).with_name("kiln"))
    export = subprocess.run(
        [kiln, "bento", "export", "reviews:1", "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    tag = json.loads(export.stdout)["tag"]
    probe = (
        "import sys; from kiln.serving.bento.store import StoreRepository; "
        "opened = StoreRepository(sys.argv[1]).open('reviews', 1); "
        "print(opened.tokenizer.sha256, opened.tokenizer_sha256)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, tag], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [served.tokenizer.sha256] * 2
