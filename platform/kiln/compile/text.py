"""Text models in the compile core: their signature, parity's random texts, realistic timing.

A text model takes `input_ids` and `attention_mask` (int64, batch x tokens, both axes dynamic)
and returns class scores (`kiln.text`). Compiling one differs from compiling an image model in
three places, all here:

- Random inputs must be inputs a tokenizer could produce: ids in [0, vocab_size), and masks
  that are a prefix of ones with at least one token, at a second sequence length (half the
  held-out one: never past the model's maximum length, where position embeddings end).
  Noise masks (holes, empty rows) would test behaviour no served request has.
- Speed is measured at the lengths requests have: one held-out text of median length, on its
  own unpadded, at batch 1; the first `max_batch` held-out texts padded to their own longest
  at the maximum batch. The held-out set itself is padded to its longest text, which would
  make every timing a worst case.
- onnxruntime gets transformer fusions (`kiln.compile.fusion`) and int8 means dynamic
  quantisation (`kiln.compile.quantization`): the description (`TextModel`) says what the
  builders may assume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kiln.text import ATTENTION_MASK, INPUT_IDS, TextTokenizer
from kiln_engines import Signature, TensorSpec

TRANSFORMER_BUILDERS = ("transformer", "minilm")
"""Built-in builders whose graphs are BERT-like encoders: onnxruntime's transformer fusions
know their patterns."""

# Where the built-in builders keep their attention heads and width (kiln.train.text_builders).
_HEADS_ARGS = ("heads", "num_heads", "n_heads")
_WIDTH_ARGS = ("dim", "width", "hidden", "hidden_size", "d_model")


@dataclass(frozen=True)
class TextModel:
    """What the compile core knows about a text model beyond its signature."""

    vocab_size: int
    pad_id: int = 0
    max_length: int = 128
    """The longest sequence the model takes (its tokenizer truncates there)."""
    transformer: bool = False
    """A BERT-like encoder: onnxruntime's transformer fusions apply."""
    num_heads: int = 0
    """Attention heads, 0 when unknown (the fusions then detect them from the graph)."""
    hidden_size: int = 0
    """Model width, 0 when unknown (detected likewise)."""

    @classmethod
    def of_version(
        cls,
        text: Mapping[str, Any],
        builder: str,
        builder_args: Mapping[str, Any],
        module: Any = None,
    ) -> TextModel:
        """From a version's `config["text"]` (`TextTokenizer.settings()`) and its builder; heads
        and width from the builder's arguments, else from the built `module` (an attention
        module's `heads`, the token embedding's width) when given."""
        heads = next((int(builder_args[k]) for k in _HEADS_ARGS if k in builder_args), 0)
        width = next((int(builder_args[k]) for k in _WIDTH_ARGS if k in builder_args), 0)
        if module is not None and builder in TRANSFORMER_BUILDERS:
            parts = list(module.modules())
            found = (getattr(m, "heads", None) for m in parts)
            heads = heads or next((h for h in found if isinstance(h, int)), 0)
            dims = (getattr(m, "embedding_dim", None) for m in parts)
            width = width or next((d for d in dims if isinstance(d, int)), 0)
        return cls(
            vocab_size=int(text["vocab_size"]),
            pad_id=int(text.get("pad_id", 0)),
            max_length=int(text.get("max_length", 128)),
            transformer=builder in TRANSFORMER_BUILDERS,
            num_heads=heads,
            hidden_size=width,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_signature(num_classes: int, output_name: str = "logits") -> Signature:
    """`input_ids` and `attention_mask` int64 (-1, -1) in, float32 (-1, classes) out."""
    return Signature(
        inputs=(
            TensorSpec(INPUT_IDS, "int64", (-1, -1)),
            TensorSpec(ATTENTION_MASK, "int64", (-1, -1)),
        ),
        outputs=(TensorSpec(output_name, "float32", (-1, num_classes)),),
    )


def encode(tokenizer: TextTokenizer, texts: np.ndarray) -> dict[str, np.ndarray]:
    """`texts` (strings) as model inputs, padded to the longest."""
    return tokenizer.encode([str(t) for t in texts]).inputs()


def second_length(length: int, max_length: int) -> int:
    """The sequence length of parity's random set: another than the held-out `length`, and
    one the model takes."""
    if length >= 2:
        return max(1, length // 2)
    return min(2, max_length)


def random_text_inputs(
    text: TextModel, like: Mapping[str, np.ndarray], count: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """`count` random token sequences a tokenizer could have produced, at `second_length`:
    ids uniform in [0, vocab_size), each row `[1, length]` tokens long (the first row the
    full length, so the whole width is used), `pad_id` and mask 0 after."""
    rng = np.random.default_rng(seed)
    length = second_length(int(like[INPUT_IDS].shape[1]), text.max_length)
    lengths = rng.integers(1, length + 1, size=count)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(0, text.vocab_size, size=(count, length), dtype=np.int64)
    ids = np.where(mask == 1, ids, text.pad_id).astype(np.int64)
    return {INPUT_IDS: np.ascontiguousarray(ids), ATTENTION_MASK: np.ascontiguousarray(mask)}


def _trimmed(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`rows` cut to their longest member (columns of padding only dropped)."""
    width = max(1, int(rows[ATTENTION_MASK].sum(axis=1).max()))
    return {name: np.ascontiguousarray(a[:, :width]) for name, a in rows.items()}


def timing_batches(
    samples: Mapping[str, np.ndarray], max_batch: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(batch 1, max batch) of held-out texts at the lengths requests have: the text of median
    length alone, and the first `max_batch` texts (repeated when there are fewer) padded to
    their longest."""
    lengths = samples[ATTENTION_MASK].sum(axis=1)
    median = int(np.argsort(lengths, kind="stable")[len(lengths) // 2])
    one = _trimmed({name: a[median : median + 1] for name, a in samples.items()})
    reps = -(-max_batch // len(lengths))
    full = _trimmed({name: np.concatenate([a] * reps)[:max_batch] for name, a in samples.items()})
    return one, full
