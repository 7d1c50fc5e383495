"""The reference profile of a text model: what its texts and predictions looked like when it was
trained, so that served texts can be compared with it (text drift, `kiln.evaluate.text_drift`).

`text_reference` is what the trainer stores as a text version's `reference` instead of
`kiln.data.profile.reference_profile` (a text has no numeric input features). It holds:

- `"text"`: measured with the version's own tokenizer over the training texts:
  - `length`: the distribution of token counts per text (after truncation to the tokenizer's
    maximum length), as `kiln.data.profile.feature_summary` stores a numeric feature (decile
    bins and fractions for PSI, 101 quantiles for KS, mean, std), plus a fixed-width
    `histogram` over 0..max_length for the report;
  - `unknown`: the share of tokens that are the unknown token (`rate`) and the share of texts
    with at least one (`texts`);
  - `truncated`: the share of texts longer than the maximum length;
  - `tokens`: the `TOP_TOKENS` most frequent token ids (ties by id) with their shares of all
    counted tokens, and the share of every other token (`other`). Special tokens other than the
    unknown token ([PAD], [CLS], [SEP]: a fixed number per text) are not counted: their share
    only restates the length;
  - `tokenizer_sha256` (which tokenizer measured it), `samples`, a few `examples`.
- `"predictions"`: exactly `kiln.data.profile.prediction_profile` on held-out scores, so
  prediction and confidence drift work as they do for every classifier.

No `"inputs"`: readers of numeric input features skip a text version. Deterministic: the same
texts, tokenizer and scores give the same profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kiln.data.profile import (
    MAX_SAMPLES,
    PROFILE_FORMAT,
    _round,
    bin_fractions,
    feature_summary,
    prediction_profile,
)
from kiln.text.tokenizer import TextTokenizer

Array = npt.NDArray[Any]
TOP_TOKENS = 200
"""Token ids whose shares are stored: the top of the vocabulary, where most tokens fall (on
the review snippets the top 200 of 8,000 cover about half of all tokens); the rest is one
"other" bucket, so a shift to another vocabulary shows as "other" growing."""
HISTOGRAM_BINS = 16
"""Equal-width bins over 0..max_length for the report's length histogram."""
EXAMPLES = 5
EXAMPLE_CHARS = 200
CHUNK = 2048
"""Texts tokenised at a time (bounds the padded id matrix of a batch)."""


def counted_special_ids(tokenizer: TextTokenizer) -> list[int]:
    """The ids left out of token counts: special tokens other than the unknown token."""
    decoder = tokenizer.tokenizer.get_added_tokens_decoder()
    return sorted(
        int(i)
        for i, token in decoder.items()
        if getattr(token, "special", False) and int(i) != tokenizer.unk_id
    )


def token_statistics(
    texts: Sequence[str] | Array, tokenizer: TextTokenizer
) -> tuple[Array, Array, Array, Array]:
    """Per text its token count, unknown-token count and whether it was truncated, and the
    count of every token id over all texts (special tokens but the unknown one left out)."""
    n = len(texts)
    lengths = np.zeros(n, dtype=np.int64)
    unknown = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    counts = np.zeros(max(tokenizer.vocab_size, 1), dtype=np.int64)
    for start in range(0, n, CHUNK):
        encoded = tokenizer.encode(list(texts[start : start + CHUNK]))
        stop = start + len(encoded.lengths)
        lengths[start:stop] = encoded.lengths
        unknown[start:stop] = encoded.unknown
        truncated[start:stop] = encoded.truncated
        ids = encoded.input_ids[encoded.attention_mask.astype(bool)]
        ids = ids[(ids >= 0) & (ids < len(counts))]
        counts += np.bincount(ids, minlength=len(counts))[: len(counts)]
    counts[counted_special_ids(tokenizer)] = 0
    return lengths, unknown, truncated, counts


def histogram_edges(max_length: int) -> list[float]:
    """Interior edges of `HISTOGRAM_BINS` equal-width bins over 0..max_length (whole tokens)."""
    width = max(1, int(np.ceil(max_length / HISTOGRAM_BINS)))
    return [float(e) for e in range(width, max_length, width)]


def top_tokens(counts: Array, tokenizer: TextTokenizer, k: int = TOP_TOKENS) -> dict[str, Any]:
    """The `k` most frequent ids (ties by the smaller id) and their shares, and "other"."""
    total = int(counts.sum())
    order = np.lexsort((np.arange(len(counts)), -counts))
    top = [int(i) for i in order[:k] if counts[i] > 0]
    shares = counts[top] / max(total, 1)
    return {
        "k": k,
        "total": total,
        "ids": top,
        "names": [tokenizer.tokenizer.id_to_token(i) or str(i) for i in top],
        "shares": _round(shares),
        "other": _round([1.0 - float(shares.sum()) if total else 0.0])[0],
    }


def text_profile(
    texts: Sequence[str] | Array, tokenizer: TextTokenizer, seed: int = 0
) -> dict[str, Any]:
    """The `"text"` half of a text reference (see the module docstring)."""
    texts = [str(t) for t in texts]
    if len(texts) > MAX_SAMPLES:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), MAX_SAMPLES, replace=False))
        texts = [texts[i] for i in keep]
    if not texts:
        raise ValueError("a text reference needs at least one text")
    lengths, unknown, truncated, counts = token_statistics(texts, tokenizer)
    edges = histogram_edges(tokenizer.max_length)
    tokens = max(int(lengths.sum()), 1)
    return {
        "samples": len(texts),
        "tokenizer_sha256": tokenizer.sha256,
        "max_length": tokenizer.max_length,
        "length": {
            **feature_summary(lengths),
            "histogram": {"edges": edges, "fractions": _round(bin_fractions(lengths, edges))},
        },
        "unknown": {
            "rate": _round([unknown.sum() / tokens])[0],
            "texts": _round([float((unknown > 0).mean())])[0],
        },
        "truncated": _round([float(truncated.mean())])[0],
        "tokens": top_tokens(counts, tokenizer),
        "examples": [t[:EXAMPLE_CHARS] for t in texts[:EXAMPLES]],
    }


def text_reference(
    texts: Sequence[str] | Array,
    tokenizer: TextTokenizer,
    outputs: Array,
    labels: Array | None,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """What `kiln train` stores as a text version's `reference`: the training `texts` measured
    with the version's `tokenizer`, and the prediction profile of held-out class scores
    (`outputs`, n x classes) with their `labels` (None: no accuracy recorded)."""
    return {
        "format": PROFILE_FORMAT,
        "modality": "text",
        "class_names": [str(c) for c in class_names],
        "text": text_profile(texts, tokenizer),
        "predictions": prediction_profile(outputs, labels),
    }
