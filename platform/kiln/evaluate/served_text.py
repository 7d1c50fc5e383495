"""Text drift of a served text version, from its traffic rows (`texts`, `text_tokens`,
`text_unknown`, and the `input` of pre-tokenised requests): the logged counts give lengths and
the unknown-token rate; the logged strings, tokenised with the version's own tokenizer (its
registry artifact), or the logged ids of pre-tokenised requests, give token frequencies."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from kiln.errors import KilnError
from kiln.evaluate.drift import DriftThresholds
from kiln.evaluate.text_drift import TextDrift, text_drift
from kiln.evaluate.version_info import VersionInfo
from kiln.text import TextTokenizer
from kiln.text.profile import counted_special_ids, token_statistics

TEXT_ROW_COLUMNS = ("version", "texts", "text_tokens", "text_unknown", "input", "input_shape")


def version_text_drift(rows: pl.DataFrame, info: VersionInfo, t: DriftThresholds) -> TextDrift:
    """Text drift of one text version's sampled traffic `rows` (`TEXT_ROW_COLUMNS`) against
    its reference (`info.reference["text"]`)."""
    reference = info.reference["text"]
    lengths = rows["text_tokens"].explode().drop_nulls().to_numpy()
    unknown = rows["text_unknown"].explode().drop_nulls().to_numpy()
    counts, counted, note = token_counts(rows, info, reference)
    return text_drift(
        lengths, unknown, reference, t, token_counts=counts, counted_texts=counted, note=note
    )


def token_counts(
    rows: pl.DataFrame, info: VersionInfo, reference: dict[str, Any]
) -> tuple[np.ndarray | None, int, str | None]:
    """Counts by token id over the logged texts and pre-tokenised ids of `rows`, how many
    texts they came from, or (None, 0, why not)."""
    texts = [str(s) for s in rows["texts"].drop_nulls().explode().drop_nulls().to_list()]
    tokenised = rows.filter(
        pl.col("texts").is_null()
        & pl.col("input").is_not_null()
        & (pl.col("input_shape").list.len() == 2)
    )
    if not texts and not tokenised.height:
        return (
            None,
            0,
            (
                "token frequencies not measured: no texts were logged "
                "(KILN_TRAFFIC_INPUT_SAMPLE_RATE=0 logs none)"
            ),
        )
    if info.tokenizer is None:
        why = info.tokenizer_problem or "the version's tokenizer is not known here"
        return None, 0, f"token frequencies not measured: {why}"
    try:
        tokenizer = TextTokenizer.from_file(info.tokenizer)
    except KilnError as exc:
        return None, 0, f"token frequencies not measured: {exc}"
    if reference.get("tokenizer_sha256") not in (None, tokenizer.sha256):
        return (
            None,
            0,
            (
                "token frequencies not measured: the reference was measured with tokenizer "
                f"{reference['tokenizer_sha256'][:12]}, the version's tokenizer is "
                f"{tokenizer.sha256[:12]}"
            ),
        )
    _, _, _, counts = token_statistics(texts, tokenizer)
    counted = len(texts)
    if tokenised.height:
        ids = tokenised["input"].explode().drop_nulls().to_numpy()
        ids = ids[np.isfinite(ids)].astype(np.int64)
        ids = ids[(ids >= 0) & (ids < len(counts))]
        extra = np.bincount(ids, minlength=len(counts))[: len(counts)]
        # Padding is a special token; so are [CLS] and [SEP]: none of them is counted.
        extra[counted_special_ids(tokenizer)] = 0
        extra[tokenizer.pad_id] = 0
        counts = counts + extra
        counted += int(sum(shape[0] for shape in tokenised["input_shape"].to_list()))
    return counts, counted, None
