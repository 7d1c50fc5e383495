"""Compiling text models (issue 16): parity's random token sequences, timing at real lengths,
int8 tolerances, dynamic batch and sequence axes, and a small text module compiled to
onnxruntime fp32 and int8 (dynamic quantisation) and served at two lengths.

The module is the smallest text model there is: an embedding, masked mean pooling, a linear
head (forward(input_ids, attention_mask)); weights are fixed by a seed, inputs are made up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from kiln.compile import CompileOptions, CompileReport, compile_module
from kiln.compile.export import _require_dynamic_axes, dynamic_axes
from kiln.compile.parity import TEXT_THRESHOLDS, THRESHOLDS, _failures, compare
from kiln.compile.targets import WITHOUT_ATTENTION
from kiln.compile.text import (
    TextModel,
    random_text_inputs,
    second_length,
    text_signature,
    timing_batches,
)
from kiln.errors import EngineBuildFailed
from kiln.text import ATTENTION_MASK, INPUT_IDS
from kiln_engines import load

VOCAB = 120
TEXT = TextModel(vocab_size=VOCAB, pad_id=0, max_length=32)
SIGNATURE = text_signature(3)


class MeanPool(nn.Module):
    """Embedding, mean over the real tokens, linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.to(torch.float32).unsqueeze(-1)
        pooled = (self.tokens(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        out: torch.Tensor = self.head(pooled)
        return out


def texts(rows: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Made-up tokenised texts of 2..width tokens, padded to `width` (the first row full)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, width + 1, size=rows)
    lengths[0] = width
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(4, VOCAB, size=(rows, width)), 0).astype(np.int64)
    return {INPUT_IDS: ids, ATTENTION_MASK: mask}


HELD_OUT = texts(40, 12)
FAST = {"max_batch": 8, "threads": 1, "random_samples": 24, "measure_seconds": 0.1}


def compiled(tmp_path: Path, precision: str) -> CompileReport:
    return compile_module(
        MeanPool(),
        SIGNATURE,
        HELD_OUT,
        tmp_path,
        CompileOptions(targets=("onnxruntime",), precision=precision, **FAST),  # type: ignore[arg-type]
        text=TEXT,
    )


def test_random_texts_are_texts_a_tokenizer_could_produce() -> None:
    drawn = random_text_inputs(TEXT, HELD_OUT, 200, seed=3)
    ids, mask = drawn[INPUT_IDS], drawn[ATTENTION_MASK]
    assert ids.dtype == mask.dtype == np.int64
    # A second length, inside the model's maximum.
    assert ids.shape == mask.shape == (200, second_length(12, TEXT.max_length)) == (200, 6)
    assert ids.min() >= 0 and ids.max() < VOCAB
    lengths = mask.sum(axis=1)
    assert lengths.min() >= 1 and lengths[0] == mask.shape[1]
    # Each mask is a prefix of ones; padding carries the pad id.
    assert (mask == (np.arange(mask.shape[1])[None, :] < lengths[:, None])).all()
    assert (ids[mask == 0] == TEXT.pad_id).all()


def test_second_length_stays_inside_the_maximum() -> None:
    assert second_length(32, 32) == 16
    assert second_length(1, 32) == 2
    assert second_length(1, 1) == 1


def test_timing_uses_the_lengths_requests_have() -> None:
    one, full = timing_batches(HELD_OUT, 8)
    lengths = HELD_OUT[ATTENTION_MASK].sum(axis=1)
    # Batch 1: the median-length text alone, unpadded.
    assert one[INPUT_IDS].shape == (1, int(np.sort(lengths)[len(lengths) // 2]))
    assert one[ATTENTION_MASK].all()
    # Max batch: the first 8 texts padded to their own longest (the first is 12 long).
    assert full[INPUT_IDS].shape == (8, int(lengths[:8].max()))
    short = {k: v[1:4, :6] for k, v in texts(10, 6).items()}
    _, tiled = timing_batches(short, 8)
    assert tiled[INPUT_IDS].shape[0] == 8  # repeated when there are fewer texts


def test_int8_text_tolerances_are_stated_and_checked() -> None:
    limits = TEXT_THRESHOLDS["int8"]
    assert limits.min_top1 == 0.99 and limits.max_abs_diff is not None
    assert TEXT_THRESHOLDS["fp32"] == THRESHOLDS["fp32"]
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((400, 2)).astype(np.float32) * 3
    ref[:, 0] += np.sign(ref[:, 0] - ref[:, 1]) * 1.0  # no near-ties
    close = ref + rng.uniform(-0.05, 0.05, ref.shape).astype(np.float32)
    assert _failures("held-out", compare({"logits": ref}, {"logits": close}), limits) == []
    flipped = close.copy()
    flipped[:6] = flipped[:6, ::-1]  # 1.5% of the predictions change: below 99%
    failures = _failures("held-out", compare({"logits": ref}, {"logits": flipped}), limits)
    assert any("top-1 agreement 98.50% < 99.0%" in f for f in failures)
    scale = float(np.abs(ref).max())
    far = ref.copy()
    far[0, 0] += limits.max_abs_diff * scale * 1.5  # the top-1 stays, the logit does not
    failures = _failures("held-out", compare({"logits": ref}, {"logits": far}), limits)
    assert failures == [
        f"held-out 'logits': max abs diff {limits.max_abs_diff * scale * 1.5:.3g} > "
        f"{limits.max_abs_diff * scale:.3g}"
    ]


def test_fp32_engine_has_dynamic_batch_and_sequence_axes_and_serves_two_lengths(
    tmp_path: Path,
) -> None:
    report = compiled(tmp_path, "fp32")
    by_kind = {r.kind: r for r in report.results}
    assert by_kind["onnx"].passed and by_kind["onnxruntime"].passed, by_kind
    exported = onnx.load(str(tmp_path / "model.onnx"))
    assert dynamic_axes(exported) == {INPUT_IDS: (True, True), ATTENTION_MASK: (True, True)}
    # The random set ran at the second length: both lengths were verified.
    parity = by_kind["onnxruntime"].parity
    assert parity is not None and parity.held_out[0].max_abs_diff <= 1e-4
    assert parity.random[0].top1_agreement == 1.0
    perf = by_kind["onnxruntime"].performance
    assert perf is not None and perf.sequence_lengths is not None
    assert perf.to_dict()["sequence_lengths"]["max_batch"] <= 12
    assert report.eager is not None and report.eager.sequence_lengths == perf.sequence_lengths
    # Not a transformer: no fusions attempted; the report says nothing of them.
    assert "transformer_fusions" not in by_kind["onnxruntime"].build

    module = MeanPool().eval()
    path = by_kind["onnxruntime"].path
    assert path is not None
    with load(path, "onnxruntime") as engine:
        for width in (5, 17):
            feed = texts(3, width, seed=width)
            with torch.no_grad():
                expected = module(*(torch.from_numpy(feed[n]) for n in (INPUT_IDS, ATTENTION_MASK)))
            got = engine.infer(feed)["logits"]
            np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_int8_is_dynamic_quantisation_without_calibration(tmp_path: Path) -> None:
    report = compiled(tmp_path, "int8")  # no calibration data given: dynamic needs none
    [result] = report.results
    assert result.passed, result.reason
    quantization = result.build["quantization"]
    assert quantization["method"].startswith("dynamic")
    assert sum(quantization["quantized_nodes"].values()) >= 1
    assert result.parity is not None
    assert result.parity.thresholds == TEXT_THRESHOLDS["int8"]
    assert result.parity.held_out[0].top1_agreement is not None
    assert result.parity.held_out[0].top1_agreement >= 0.99


def test_a_transformer_flag_without_patterns_keeps_the_plain_graph(tmp_path: Path) -> None:
    report = compile_module(
        MeanPool(),
        SIGNATURE,
        HELD_OUT,
        tmp_path,
        CompileOptions(targets=("onnxruntime",), **FAST),  # type: ignore[arg-type]
        text=TextModel(vocab_size=VOCAB, max_length=32, transformer=True),
    )
    result = next(r for r in report.results if r.kind == "onnxruntime")
    assert result.passed, result.reason
    fusions = result.build["transformer_fusions"]
    assert fusions["applied"] is False
    assert fusions["reason"] == "no transformer pattern found"
    assert not (tmp_path / "model.fused.onnx").exists()


def test_an_export_that_fixed_the_sequence_length_is_refused_by_name() -> None:
    def graph(length: int | str) -> onnx.ModelProto:
        inputs = [
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["batch", length])
            for name in (INPUT_IDS, ATTENTION_MASK)
        ]
        output = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, None)
        node = onnx.helper.make_node("Add", [INPUT_IDS, ATTENTION_MASK], ["logits"])
        return onnx.helper.make_model(onnx.helper.make_graph([node], "g", inputs, [output]))

    _require_dynamic_axes(graph("length"), SIGNATURE)
    with pytest.raises(EngineBuildFailed, match="fixed axis 1 of input 'input_ids'"):
        _require_dynamic_axes(graph(12), SIGNATURE)


def test_pretrained_tokenizer_settings_describe_the_encoder() -> None:
    """A pretrained encoder's settings (MiniLM: its own vocabulary, [UNK] = 100) are taken as
    recorded; the random ids stay inside its vocabulary."""
    settings = {
        "kind": "wordpiece",
        "vocab_size": 30522,
        "max_length": 64,
        "pad_id": 0,
        "unk_id": 100,
        "pretrained": "all-MiniLM-L6-v2",
        "sha256": "0" * 64,
    }
    text = TextModel.of_version(settings, "minilm", {})
    assert (text.vocab_size, text.pad_id, text.max_length) == (30522, 0, 64)
    assert text.transformer and text.num_heads == 0 and text.hidden_size == 0
    drawn = random_text_inputs(text, {INPUT_IDS: np.zeros((2, 64), np.int64)}, 500)
    assert drawn[INPUT_IDS].max() < 30522 and drawn[INPUT_IDS].shape[1] == 32
    trained = TextModel.of_version(
        {"vocab_size": 300, "pad_id": 0, "max_length": 32}, "transformer", {"width": 32, "heads": 2}
    )
    assert (trained.num_heads, trained.hidden_size) == (2, 32)
    assert not TextModel.of_version({"vocab_size": 300}, "gru", {"width": 32}).transformer


def test_kilns_transformer_keeps_the_plain_graph_unless_attention_was_fused(
    tmp_path: Path,
) -> None:
    from kiln.train.text_builders import transformer

    torch.manual_seed(0)
    module = transformer(VOCAB, 3, pad_id=0, max_length=32, width=32, layers=1, heads=2)
    text = TextModel.of_version(
        {"vocab_size": VOCAB, "pad_id": 0, "max_length": 32}, "transformer", {}, module
    )
    assert (text.num_heads, text.hidden_size) == (2, 32)  # found in the module
    builds = {}
    for name, precision, fusions in (
        ("auto", "fp32", None),
        ("forced", "fp32", True),
        ("int8", "int8", None),
    ):
        report = compile_module(
            module,
            SIGNATURE,
            HELD_OUT,
            tmp_path / name,
            CompileOptions(  # type: ignore[arg-type]
                targets=("onnxruntime",), precision=precision, transformer_fusions=fusions, **FAST
            ),
            text=text,
        )
        result = next(r for r in report.results if r.kind == "onnxruntime")
        assert result.passed, result.reason
        builds[name] = result.build["transformer_fusions"]
    forced = builds["forced"]
    assert forced["applied"] is True and forced["num_heads"] == 2
    assert forced["fused"]["SkipLayerNormalization"] >= 1 and "Attention" not in forced["fused"]
    assert forced["max_abs_diff_vs_plain"] <= 1e-5
    # By default, without a fused Attention, the plain export is kept, at fp32 and int8.
    for name in ("auto", "int8"):
        assert builds[name]["applied"] is False
        assert builds[name]["reason"] == WITHOUT_ATTENTION
        assert builds[name]["fused"] == forced["fused"]  # what could be fused is recorded


def test_a_failing_optimiser_keeps_the_plain_graph(tmp_path: Path) -> None:
    from kiln.compile.fusion import fuse_transformer

    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    source, report = fuse_transformer(broken, tmp_path / "model.fused.onnx", TEXT)
    assert source == broken
    assert report["applied"] is False and report["reason"].startswith("optimizer failed")
