"""Bad text inputs, each refused alone with INVALID_ARGUMENT and a message that says what was
wrong and what the model takes; the server keeps answering good requests afterwards.

One real server (`grpc_harness.running_server`) serves a text version and an image model;
every request comes from the stock `tritonclient.grpc` client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import INPUT, RunningServer, register, running_server
from tests.integration.text_serving_models import register_text_version, tokenizer

MAX_TEXT_BYTES = 64 * 1024  # the default limit


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("text-errors")
    with kiln.registry.open(settings=Settings(home=root / "home")) as registry:
        register_text_version(registry, root, "reviews", tokenizer(), seed=1)
        register(registry, root, "digits", seed=1)
    with running_server(root / "home", models=("reviews", "digits"), max_batch_size=8) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    with server.client() as client:
        yield client


def _tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _strings(*elements: bytes) -> triton.InferInput:
    return _tensor("text", np.array(list(elements), dtype=object), "BYTES")


def _refused(client: triton.InferenceServerClient, model: str, *inputs: triton.InferInput) -> str:
    """The message of the INVALID_ARGUMENT the request gets; checks the server still serves."""
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, list(inputs))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value.message()
    good = client.infer("reviews", [_strings(b"a good film")])
    assert good.as_numpy("logits").shape == (1, 2)
    return str(err.value.message())


def test_bytes_that_are_not_utf8_are_refused_naming_the_element(
    client: triton.InferenceServerClient,
) -> None:
    message = _refused(client, "reviews", _strings(b"fine", b"caf\xe9 latte"))
    assert "element 1 of 'text' is not valid UTF-8 (byte 3" in message
    assert "send strings encoded as UTF-8" in message


def test_an_empty_string_is_refused(client: triton.InferenceServerClient) -> None:
    message = _refused(client, "reviews", _strings(b"fine", b"also fine", b""))
    assert "element 2 of 'text' is an empty string" in message


def test_a_string_over_the_byte_limit_is_refused_with_the_limit(
    client: triton.InferenceServerClient,
) -> None:
    message = _refused(client, "reviews", _strings(b"x" * (MAX_TEXT_BYTES + 1)))
    assert f"has {MAX_TEXT_BYTES + 1} bytes, more than the limit of {MAX_TEXT_BYTES}" in message
    assert "KILN_SERVE_MAX_TEXT_BYTES" in message
    # At the limit it is answered: truncated to the tokenizer's max_length tokens.
    answered = client.infer("reviews", [_strings(b"good " * (MAX_TEXT_BYTES // 5))])
    assert answered.as_numpy("logits").shape == (1, 2)


def test_text_of_the_wrong_datatype_is_refused(client: triton.InferenceServerClient) -> None:
    message = _refused(client, "reviews", _tensor("text", np.zeros((2,), np.float32), "FP32"))
    assert "input 'text' has datatype FP32, but it takes BYTES (UTF-8 strings)" in message


def test_text_of_the_wrong_shape_is_refused(client: triton.InferenceServerClient) -> None:
    grid = np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)
    message = _refused(client, "reviews", _tensor("text", grid, "BYTES"))
    assert "input 'text' has shape [2, 2]; it takes [n] or [n, 1]" in message


def test_text_with_pre_tokenised_inputs_is_refused(client: triton.InferenceServerClient) -> None:
    ids = np.ones((1, 3), np.int64)
    message = _refused(client, "reviews", _strings(b"a film"), _tensor("input_ids", ids, "INT64"))
    assert "the request has 'text' and also 'input_ids'" in message
    assert "not both" in message


def test_wrong_input_names_are_told_both_alternatives(client: triton.InferenceServerClient) -> None:
    message = _refused(client, "reviews", _tensor("sentence", np.array([b"hi"], object), "BYTES"))
    assert "unexpected input 'sentence'" in message
    assert "either 'text' (BYTES [n] or [n, 1], UTF-8 strings)" in message
    assert "'input_ids' and 'attention_mask' (INT64 [n, L], pre-tokenised)" in message


def test_half_of_the_pre_tokenised_inputs_is_refused(client: triton.InferenceServerClient) -> None:
    message = _refused(client, "reviews", _tensor("input_ids", np.ones((1, 3), np.int64), "INT64"))
    assert "missing input 'attention_mask'" in message


def test_token_ids_outside_the_vocabulary_are_refused(client: triton.InferenceServerClient) -> None:
    ids = np.array([[2, 3, 10**6]], np.int64)
    mask = np.ones((1, 3), np.int64)
    message = _refused(
        client,
        "reviews",
        _tensor("input_ids", ids, "INT64"),
        _tensor("attention_mask", mask, "INT64"),
    )
    assert "input 'input_ids' holds ids outside 0.." in message


def test_a_model_without_a_tokenizer_refuses_strings(client: triton.InferenceServerClient) -> None:
    strings = np.array([b"a digit"], dtype=object)
    message = _refused(client, "digits", _tensor(INPUT, strings, "BYTES"))
    assert f"input '{INPUT}' has datatype BYTES, but the model expects FP32" in message
    assert "it takes no strings (it is not a text model)" in message
