"""`kiln compile` on registered text versions (issue 16): a tiny transformer and a tiny GRU
trained by Kiln's trainer on a slice of rotten-tomatoes, compiled to onnxruntime fp32, int8
(dynamic quantisation) and AOTInductor, judged on the test split's texts tokenised by the
version's own tokenizer, and served at two sequence lengths. (The gru's AOTInductor build fails
on torch 2.13, saying why: inductor cannot lower its scan with a dynamic batch axis.)

One AOTInductor compile per builder (C++ on 2 cores, ~20-30 s each), so this module is slow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch

import kiln.registry
from kiln.compile import CompileOptions, compile_version, signature_of
from kiln.compile.export import dynamic_axes
from kiln.compile.parity import TEXT_THRESHOLDS
from kiln.compile.targets import WITHOUT_ATTENTION
from kiln.registry import Registry
from kiln.settings import Settings
from kiln.text import ATTENTION_MASK, INPUT_IDS
from kiln.train import load_checkpoint
from kiln_engines import load
from tests.integration.text_models import train_text_version

FAST = {"max_batch": 16, "threads": 1, "parity_samples": 64, "random_samples": 32}


@pytest.fixture
def registry(settings: Settings) -> Any:
    with kiln.registry.open(settings=settings) as opened:
        yield opened


def _encoded(registry: Registry, ref: str, texts: list[str]) -> dict[str, np.ndarray]:
    version = registry.resolve(ref)
    checkpoint = load_checkpoint(registry.artifact_file(registry.checkpoint(version.name, 1)))
    assert checkpoint.tokenizer is not None
    return checkpoint.tokenizer.encode(texts).inputs()


def _eager(registry: Registry, ref: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    version = registry.resolve(ref)
    checkpoint = load_checkpoint(registry.artifact_file(registry.checkpoint(version.name, 1)))
    with torch.no_grad():
        out = checkpoint.model.eval()(
            torch.from_numpy(feed[INPUT_IDS]), torch.from_numpy(feed[ATTENTION_MASK])
        )
    return np.asarray(out.numpy())


SHORT = ["a gem.", "dull and long."]
LONG = [
    "an absorbing, beautifully acted drama that earns every one of its quiet, devastating "
    "moments and then some, right up to the final frame",
    "the plot makes no sense at all and the jokes land with a thud",
]


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["transformer", "gru"])
def test_a_text_version_compiles_to_every_cpu_target(
    registry: Registry, settings: Settings, builder: str
) -> None:
    version = train_text_version(registry, settings, builder=builder)
    ref = version.ref
    config = load_checkpoint(
        registry.artifact_file(registry.checkpoint(version.name, version.version))
    ).config
    signature = signature_of(config)
    assert [(s.name, s.dtype, s.shape) for s in signature.inputs] == [
        (INPUT_IDS, "int64", (-1, -1)),
        (ATTENTION_MASK, "int64", (-1, -1)),
    ]
    assert signature.outputs[0].shape == (-1, 2)

    outcome = compile_version(
        registry,
        ref,
        CompileOptions(targets=("onnxruntime", "aotinductor"), measure_seconds=0.2, **FAST),  # type: ignore[arg-type]
        settings,
    )
    by_kind = {(r.kind, r.device): r for r in outcome.report.results}
    expected = [("onnx", "cpu"), ("onnxruntime", "cpu")]
    if builder == "gru":
        # torch 2.13's inductor cannot lower the gru's scan with a dynamic batch axis: the
        # target fails, saying so and what to use instead (nothing is registered for it).
        [aoti] = [r for r in outcome.report.results if r.kind == "aotinductor"]
        assert aoti.status == "failed"
        assert "scan" in (aoti.reason or "") and "--target onnxruntime" in (aoti.reason or "")
    else:
        expected.append(("aotinductor", "cpu"))
    for key in expected:
        result = by_kind[key]
        assert result.status == "passed", result.reason
        assert result.parity is not None
        held, rand = result.parity.held_out[0], result.parity.random[0]
        assert held.samples == 64 and held.top1_agreement == 1.0 and held.max_abs_diff <= 1e-4
        assert rand.max_abs_diff <= 1e-4
        assert result.performance is not None and result.performance.sequence_lengths
    assert len(outcome.artifacts) == len(expected)
    ort = by_kind[("onnxruntime", "cpu")]
    fusions = ort.build.get("transformer_fusions")
    if builder == "transformer":
        # Fused layer norms and GELUs but no attention: the plain export is kept, saying so.
        assert fusions is not None and fusions["applied"] is False
        assert fusions["fused"].get("SkipLayerNormalization", 0) >= 1
        assert fusions["reason"] == WITHOUT_ATTENTION
    else:
        assert fusions is None  # not a transformer: no fusions tried

    # Both axes are dynamic in the registered ONNX file.
    onnx_artifact = next(a for a in outcome.artifacts if a.kind.value == "onnx")
    exported = onnx.load(str(registry.artifact_file(onnx_artifact)))
    assert dynamic_axes(exported) == {INPUT_IDS: (True, True), ATTENTION_MASK: (True, True)}

    # What serving does: load each registered engine, run texts of two lengths.
    short, long = _encoded(registry, ref, SHORT), _encoded(registry, ref, LONG)
    assert short[INPUT_IDS].shape[1] < long[INPUT_IDS].shape[1]
    for artifact in outcome.artifacts:
        with load(registry.artifact_file(artifact), artifact.kind.value) as engine:
            for feed in (short, long):
                np.testing.assert_allclose(
                    engine.infer(feed)["logits"], _eager(registry, ref, feed), atol=1e-4
                )


@pytest.mark.slow
def test_int8_is_dynamic_quantisation_checked_on_held_out_texts(
    registry: Registry, settings: Settings, cli: Any
) -> None:
    # Trained past the near-ties of a 2-epoch model (whose logits are within 0.5 of each
    # other): there int8's 0.01-0.02 logit error flips 3 of 128 predictions, and parity
    # refuses it (97.66% < 99%), as it should.
    version = train_text_version(
        registry, settings, builder="transformer", epochs=8, train_rows=800
    )
    result = cli(
        "compile", version.ref, "--precision", "int8", "--max-batch", "16",
        "--parity-samples", "128", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.json()
    [ort] = report["results"]
    assert ort["kind"] == "onnxruntime" and ort["status"] == "passed"
    assert ort["build"]["quantization"]["method"].startswith("dynamic")
    assert ort["build"]["quantization"]["quantized_nodes"]
    parity = ort["parity"]
    int8 = TEXT_THRESHOLDS["int8"]
    assert parity["thresholds"]["min_top1"] == int8.min_top1 == 0.99
    assert parity["thresholds"]["max_abs_diff"] == int8.max_abs_diff
    held = parity["held_out"][0]
    assert held["samples"] == 128 and held["top1_agreement"] >= 0.99
    assert ort["performance"]["sequence_lengths"]["batch1"] >= 1
    assert ort["artifact"] is not None

    artifact = next(a for a in registry.artifacts(version.name, 1) if a.kind.value == "onnxruntime")
    assert artifact.report["precision"] == "int8"
    with load(registry.artifact_file(artifact), "onnxruntime") as engine:
        for texts in (SHORT, LONG):
            feed = _encoded(registry, version.ref, texts)
            got = engine.infer(feed)["logits"]
            expected = _eager(registry, version.ref, feed)
            assert (got.argmax(-1) == expected.argmax(-1)).all()
