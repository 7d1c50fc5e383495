"""Tiny text versions for the serving tests: a trained tokenizer and an ONNX classifier over
its ids, registered as the trainer registers a text version (config `text`, a `tokenizer`
artifact, an `onnxruntime` engine).

The classifier is built with onnx's helpers (no torch, so tests stay fast): an embedding,
masked mean pooling (a row's padding changes nothing; an all-padding row pools to zeros) and a
linear head, with dynamic batch AND sequence axes, as contract 3 asks of a text model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kiln.registry import ModelVersion, Registry
from kiln.text import ATTENTION_MASK, INPUT_IDS, TextTokenizer
from kiln_engines import load

CLASS_NAMES = ["negative", "positive"]
CORPUS = [
    "a gripping, beautifully acted film with a sharp script",
    "the plot drags and the jokes fall flat",
    "one of the best movies of the year, funny and warm",
    "dull, predictable and far too long",
    "the cast is wonderful and the music is lovely",
    "a mess of a movie that never finds its footing",
    "smart, moving and often very funny",
    "tedious, noisy and badly edited from start to finish",
] * 4
"""Training text for the tokenizers: review-like snippets, repeated so merges reach min
frequency."""


def tokenizer(kind: str = "bpe", vocab_size: int = 200, max_length: int = 16) -> TextTokenizer:
    return TextTokenizer.train(CORPUS, kind=kind, vocab_size=vocab_size, max_length=max_length)


def write_text_classifier(path: Path, vocab_size: int, seed: int, classes: int = 2) -> Path:
    """int64 input_ids and attention_mask (N, L) -> float32 logits (N, classes)."""
    rng = np.random.default_rng(seed)
    width = 8
    embeddings = rng.standard_normal((vocab_size, width)).astype(np.float32)
    weights = rng.standard_normal((width, classes)).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", INPUT_IDS], ["embedded"]),
        helper.make_node("Cast", [ATTENTION_MASK], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "tokens_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "tokens_axis"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["denominator"]),
        helper.make_node("Div", ["summed", "denominator"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "W"], ["projected"]),
        helper.make_node("Add", ["projected", "B"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(embeddings, "E"),
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(bias, "B"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "tokens_axis"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "text_classifier",
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["N", "L"]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["N", "L"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def register_text_version(
    registry: Registry,
    workdir: Path,
    name: str,
    text_tokenizer: TextTokenizer,
    seed: int,
    alias: str | None = "production",
    *,
    with_tokenizer: bool = True,
) -> ModelVersion:
    """Register a text version of `name` (tokenizer and onnxruntime engine); point `alias`."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{seed}-{text_tokenizer.sha256[:8]}"
    checkpoint = workdir / f"{stem}.safetensors"
    checkpoint.write_bytes(f"checkpoint of {stem}".encode())
    config = {
        "task": "classification",
        "class_names": CLASS_NAMES,
        "text": text_tokenizer.settings(),
        "input_shape": [],
    }
    version = registry.register_version(name, checkpoint=checkpoint, config=config, metrics={})
    if with_tokenizer:
        folder = workdir / stem
        folder.mkdir(exist_ok=True)
        path = text_tokenizer.save(folder / "tokenizer.json")
        registry.add_artifact(name, version.version, kind="tokenizer", path=path)
    engine = write_text_classifier(
        workdir / f"{stem}.onnx", text_tokenizer.vocab_size, seed, len(CLASS_NAMES)
    )
    registry.add_artifact(name, version.version, kind="onnxruntime", path=engine)
    if alias is not None:
        registry.promote(version.ref, alias, gates=[], reason="test")
    return version


def engine_logits(
    registry: Registry, name: str, version: int, text_tokenizer: TextTokenizer, texts: list[str]
) -> np.ndarray:
    """What the in-process engine computes for `texts` tokenised by `text_tokenizer`."""
    artifact = registry.artifacts(name, version, "onnxruntime")[0]
    encoded = text_tokenizer.encode(texts)
    with load(registry.artifact_file(artifact), "onnxruntime") as engine:
        logits: np.ndarray = engine.infer(encoded.inputs())["logits"]
    return logits
