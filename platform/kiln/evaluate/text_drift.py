"""Text drift: how far a text version's served texts are from its training texts.

Measured against the reference `kiln.text.profile.text_reference` stored at training, with the
version's own tokenizer, three statistics besides the prediction and confidence drift every
classifier gets (`kiln.evaluate.drift.prediction_drift`):

- **length**: tokens per text (after truncation), as one more numeric feature: PSI over the
  reference's decile bins and a KS test against its quantiles (`feature_drift`). It counts as
  moved when the KS p-value is below `ks_alpha` and either the PSI is above `psi` or the KS
  statistic above `ks_statistic` (lengths are small whole numbers, and the decile PSI of a
  hundred texts is noisy: the PSI alone does not flag them);
- **unknown-token rate**: the share of served tokens that are the unknown token. It counts as
  moved when it rose by more than `unknown_rate_increase` (absolute: 0.005 is one token in
  200 more than at training) and the rise is significant (two-proportion z above
  `class_z`). A tokenizer that has never seen a script or a character answers with unknown
  tokens, and the model reads nothing there;
- **token frequencies**: the shares of the reference's top-K token ids (K = 200 by default)
  plus an "other" bucket for every other token, PSI over those K + 1 shares. Another domain
  uses other words: the top of the training vocabulary loses share and "other" grows. It counts
  as moved when the PSI is above `token_psi`. Tokens whose share moved (PSI term above
  `token_contribution` and |z| above `class_z`) are named, largest first. The PSI of K + 1
  shares carries noise of about K / (tokens counted): measured on held-out movie snippets
  against a model trained on the others, 0.08-0.11 for 100 texts, 0.03 for 300, 0.01 for
  1,000; product reviews gave 0.31-0.35, news articles 0.37.

Fewer than `min_samples` texts (token counts logged for them) and nothing is judged. Token
frequencies need the texts themselves (or pre-tokenised ids): without them (input sampling
off), or without the version's tokenizer, only length and unknown rate are judged and `note`
says why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kiln.data.profile import bin_fractions
from kiln.evaluate.drift import DriftThresholds, FeatureDrift, Share, feature_drift
from kiln.evaluate.drift_statistics import share_changes

Array = npt.NDArray[Any]
OTHER = "other"


@dataclass(frozen=True)
class UnknownDrift:
    """The unknown-token rate now and at training."""

    reference_rate: float
    current_rate: float
    change: float
    """current - reference (absolute: a share of tokens)."""
    z: float
    drift: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TokenShare(Share):
    """One token's share of the counted tokens (`name` its text, "other" for the rest)."""

    id: int | None = None
    """Its id in the version's vocabulary; None for "other"."""


@dataclass(frozen=True)
class TokenDrift:
    """Token-frequency shift over the reference's top tokens plus "other"."""

    tokens: int
    """Tokens counted (special tokens but the unknown one left out)."""
    texts: int
    """Texts they came from."""
    psi: float
    drift: bool
    shares: list[TokenShare]
    """The largest PSI terms first (at most `TOKEN_ROWS`)."""
    moved: list[str]
    """The tokens whose share moved, largest PSI term first."""
    reference_other: float
    current_other: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "texts": self.texts,
            "psi": self.psi,
            "drift": self.drift,
            "reference_other": self.reference_other,
            "current_other": self.current_other,
            "moved": self.moved,
            "shares": [s.to_dict() for s in self.shares],
        }


TOKEN_ROWS = 25
"""Token shares kept in a result (largest PSI term first); the rest add little to read."""


@dataclass(frozen=True)
class TextDrift:
    """A text version's served texts against its training texts."""

    samples: int
    """Texts whose token counts were logged (all requests of a text model log them)."""
    judged: bool
    length: FeatureDrift | None = None
    unknown: UnknownDrift | None = None
    tokens: TokenDrift | None = None
    """None when the texts were not logged or the tokenizer could not be read (`note`)."""
    note: str | None = None
    drifted: list[str] = field(default_factory=list)
    """Which of "length", "unknown", "tokens" moved."""
    length_histogram: dict[str, Any] | None = None
    """Served lengths on the reference's fixed-width histogram bins (for the report):
    `edges` and `reference` / `current` fractions."""

    @property
    def drift(self) -> bool:
        return bool(self.drifted)

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"samples": self.samples, "judged": self.judged}
        if self.note is not None:
            head["note"] = self.note
        if not self.judged:
            return head
        return head | {
            "drift": self.drift,
            "drifted": self.drifted,
            "length": None if self.length is None else self.length.to_dict(),
            "length_histogram": self.length_histogram,
            "unknown": None if self.unknown is None else self.unknown.to_dict(),
            "tokens": None if self.tokens is None else self.tokens.to_dict(),
        }


def unknown_drift(
    unknown: Array, lengths: Array, reference: dict[str, Any], t: DriftThresholds
) -> UnknownDrift:
    """The served unknown-token rate against the reference's (`text.unknown.rate`)."""
    reference_rate = float(reference["unknown"]["rate"])
    total = max(int(np.sum(lengths)), 1)
    reference_tokens = max(round(float(reference["length"]["mean"]) * int(reference["samples"])), 1)
    # A hand-made row may count more unknown tokens than tokens: never more than all of them.
    unknowns = float(np.clip(np.sum(unknown), 0, total))
    counts = np.array([unknowns, total - unknowns])
    current, _, z = share_changes([reference_rate, 1 - reference_rate], counts, reference_tokens)
    change = float(current[0]) - reference_rate
    return UnknownDrift(
        reference_rate=reference_rate,
        current_rate=float(current[0]),
        change=change,
        z=float(z[0]),
        drift=bool(change > t.unknown_rate_increase and z[0] > t.class_z),
    )


def token_drift(
    counts: Array, texts: int, reference: dict[str, Any], t: DriftThresholds
) -> TokenDrift:
    """Token-frequency PSI of served token `counts` (indexed by id, special tokens already
    zeroed) over `texts` texts against the reference's top tokens (`text.tokens`)."""
    top = reference["tokens"]
    ids = [int(i) for i in top["ids"]]
    names = [str(n) for n in top.get("names") or ids]
    shares = [*top["shares"], top["other"]]
    total = int(counts.sum())
    known = np.array([counts[i] if i < len(counts) else 0 for i in ids], dtype=np.float64)
    bins = np.append(known, total - known.sum())
    reference_tokens = max(int(top["total"]), 1)
    current, terms, z = share_changes(shares, bins, reference_tokens)
    labels = [*names, OTHER]
    rows = [
        TokenShare(
            name=labels[j],
            reference=float(shares[j]),
            current=float(current[j]),
            contribution=float(terms[j]),
            z=float(z[j]),
            moved=bool(terms[j] > t.token_contribution and z[j] > t.class_z),
            id=ids[j] if j < len(ids) else None,
        )
        for j in range(len(labels))
    ]
    rows.sort(key=lambda s: -s.contribution)
    psi = float(terms.sum())
    return TokenDrift(
        tokens=total,
        texts=texts,
        psi=psi,
        drift=bool(psi > t.token_psi),
        shares=rows[:TOKEN_ROWS],
        moved=[s.name for s in rows if s.moved],
        reference_other=float(shares[-1]),
        current_other=float(current[-1]),
    )


def length_histogram(lengths: Array, reference: dict[str, Any]) -> dict[str, Any]:
    """Served `lengths` on the reference's fixed-width histogram bins, beside its fractions."""
    histogram = reference["length"]["histogram"]
    return {
        "edges": histogram["edges"],
        "reference": histogram["fractions"],
        "current": [float(v) for v in bin_fractions(lengths, histogram["edges"])],
    }


def text_drift(
    lengths: Array,
    unknown: Array,
    reference: dict[str, Any],
    t: DriftThresholds,
    *,
    token_counts: Array | None = None,
    counted_texts: int = 0,
    note: str | None = None,
) -> TextDrift:
    """Text drift of served texts: their token `lengths` and `unknown` counts (one per text),
    and, when the texts (or ids) were logged, the `token_counts` by id over `counted_texts`
    of them; `reference` is the version's `reference["text"]`. `note` says why token
    frequencies are not measured when `token_counts` is None."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if len(lengths) < t.min_samples:
        return TextDrift(
            samples=len(lengths),
            judged=False,
            note=f"{len(lengths)} logged text(s), fewer than the {t.min_samples} needed",
        )
    length = feature_drift(
        "tokens per text", lengths, reference["length"], int(reference["samples"]), t
    )
    # Lengths are small whole numbers: the decile PSI of 100 same-domain texts reached 0.26
    # (measured), so the PSI counts only when KS also finds the difference significant.
    significant = length.ks_pvalue < t.ks_alpha
    by_psi = length.psi > t.psi and significant
    by_ks = significant and length.ks_statistic > t.ks_statistic
    length = dataclasses.replace(length, drift=bool(by_psi or by_ks))
    unknown_measured = unknown_drift(np.asarray(unknown), lengths, reference, t)
    tokens = None
    if token_counts is not None and counted_texts >= t.min_samples:
        tokens = token_drift(token_counts, counted_texts, reference, t)
    elif token_counts is not None:
        note = (
            f"token frequencies: {counted_texts} logged text(s), fewer than the "
            f"{t.min_samples} needed (KILN_TRAFFIC_INPUT_SAMPLE_RATE logs more)"
        )
    drifted = [
        name
        for name, measured in (
            ("length", length),
            ("unknown", unknown_measured),
            ("tokens", tokens),
        )
        if measured is not None and measured.drift
    ]
    return TextDrift(
        samples=len(lengths),
        judged=True,
        length=length,
        unknown=unknown_measured,
        tokens=tokens,
        note=note,
        drifted=drifted,
        length_histogram=length_histogram(lengths, reference),
    )
