"""Drift: how far production inputs and predictions are from a version's reference profile.

Two measures per feature, both against what `kiln.data.profile` stored at training time:

- the population stability index over the reference's decile bins,
  ``PSI = sum((cur - ref) * ln(cur / ref))``; the usual reading is < 0.1 stable,
  0.1-0.2 moderate, > 0.2 drifted (the default threshold);
- a two-sample Kolmogorov-Smirnov test. The reference side is its stored 101 quantiles (its
  empirical CDF to within 1%), with its sample size for the p-value. With large samples KS
  finds even harmless differences significant, so a feature is flagged by KS only when the
  statistic is also large (`ks_statistic`).

A categorical input feature (one the profile recorded with `categories` and `shares`: few
whole-number values) is compared by category shares instead of deciles: PSI over its
categories plus an "other" bucket for served values the reference never had (reference share
0, floored like an empty bin, so unseen values weigh heavily), the total variation distance
(the fraction of samples that would have to change category), and per category its PSI term
and a two-proportion z statistic, so that the categories that moved can be named. It counts as
moved when the PSI is above `psi`, or when the total variation is above `ks_statistic` and some
category moved (the same "large and significant" rule KS follows); its KS figures, over the
values as numbers, are reported but do not flag it.

Prediction drift compares the class shares (PSI, with each class's contribution, so that the
classes that moved can be named) and the confidence distribution (PSI and KS); for a
regression model, the distribution of predicted values (PSI and KS, as one more feature).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kiln.data.profile import bin_fractions, category_counts, features
from kiln.evaluate.drift_statistics import (
    kolmogorov_pvalue,
    ks_against_quantiles,
    psi_terms,
    share_changes,
)

__all__ = ["kolmogorov_pvalue", "ks_against_quantiles", "psi_terms", "share_changes"]
Array = npt.NDArray[Any]


@dataclass(frozen=True)
class DriftThresholds:
    """When a difference counts as drift. Defaults follow common practice for PSI."""

    psi: float = 0.2
    """PSI above this flags a feature (or the class distribution, or confidence)."""
    ks_alpha: float = 0.01
    """KS p-value below this ..."""
    ks_statistic: float = 0.1
    """... and a KS statistic above this flag a feature too."""
    class_contribution: float = 0.02
    """A class whose PSI term exceeds this, and whose share changed significantly (two-
    proportion z-test, |z| > `class_z`), is named as one that moved."""
    class_z: float = 3.0
    min_samples: int = 100
    """Fewer current samples than this: drift is not judged (too noisy)."""
    token_psi: float = 0.2
    """A text version: token-frequency PSI (over the reference's top tokens and "other")
    above this flags the texts' vocabulary as moved (`kiln.evaluate.text_drift`)."""
    token_contribution: float = 0.005
    """A text version: a token whose PSI term exceeds this (and |z| > `class_z`) is named as
    one whose share moved (lower than `class_contribution`: the PSI spreads over 201 shares)."""
    unknown_rate_increase: float = 0.005
    """A text version: an unknown-token rate this much above the reference's (a share of
    tokens: 0.005 is one token in 200), and significantly so (|z| > `class_z`), flags it."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class FeatureDrift:
    """One input feature against its reference: PSI, KS, and whether it counts as moved."""

    name: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    reference_mean: float
    current_mean: float | None
    """None when there are no current values."""
    drift: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Share:
    """One share (of a predicted class, of a category of an input feature), at training and
    now."""

    name: str
    reference: float
    current: float
    contribution: float
    """Its term of the PSI over all the shares."""
    z: float
    """The two-proportion z statistic of the change."""
    moved: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CategoryShare(Share):
    """One category's share of a categorical feature's values; `name` is the category's value,
    or "other" for values the reference never had."""


@dataclass(frozen=True)
class CategoricalDrift(FeatureDrift):
    """A categorical feature against its reference: `psi` is over its category shares."""

    total_variation: float = 0.0
    """Half the summed absolute share changes: the fraction of samples that would have to
    change category to give the reference's mix."""
    categories: list[CategoryShare] = field(default_factory=list)
    """Every reference category and "other", largest PSI term first."""
    moved_categories: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        measured = asdict(self)
        del measured["categories"], measured["moved_categories"], measured["total_variation"]
        return measured | {
            "kind": "categorical",
            "total_variation": self.total_variation,
            "categories": [c.to_dict() for c in self.categories],
            "moved_categories": self.moved_categories,
        }


@dataclass(frozen=True)
class InputDrift:
    """Drift of a version's logged inputs, per reference feature."""

    samples: int
    judged: bool
    """False when there were too few samples to judge (`note` says so); `features` is empty."""
    features: list[FeatureDrift]
    drifted: list[str]
    """The names of the features that moved."""
    note: str | None = None
    incompatible_inputs: int = 0
    """Logged inputs whose size is no whole number of the reference's samples."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Logged inputs left out, by reason (`kiln.traffic.validity`, `wrong_width`)."""

    def to_dict(self) -> dict[str, Any]:
        note = {} if self.note is None else {"note": self.note}
        return {
            "samples": self.samples,
            "judged": self.judged,
            **note,
            "features": [f.to_dict() for f in self.features],
            "drifted": self.drifted,
            "incompatible_inputs": self.incompatible_inputs,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class ClassShare(Share):
    """One class's share of the predictions."""

    index: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.index,
            "name": self.name,
            "reference": self.reference,
            "current": self.current,
            "contribution": self.contribution,
            "z": self.z,
            "moved": self.moved,
        }


@dataclass(frozen=True)
class ConfidenceDrift(FeatureDrift):
    """The distribution of top-1 confidence against the reference, measured as one more
    feature would be (`name` is "confidence")."""

    samples: int

    def to_dict(self) -> dict[str, Any]:
        measured = asdict(self)
        del measured["name"]
        return {"samples": measured.pop("samples"), **measured}


@dataclass(frozen=True)
class PredictionDrift:
    """Drift of a version's predictions: the class mix and the confidence."""

    samples: int
    judged: bool
    """False when there were too few predictions to judge (`note` says so)."""
    classes: list[ClassShare]
    moved_classes: list[str]
    note: str | None = None
    psi: float | None = None
    """The class-mix PSI (None when not judged)."""
    drift: bool = False
    """Whether the class mix moved (the confidence has its own flag)."""
    confidence: ConfidenceDrift | None = None
    skipped: int = 0
    """Predictions left out because they are no class of the version."""

    @property
    def drifted(self) -> bool:
        """The class mix or the confidence moved."""
        return self.drift or (self.confidence is not None and self.confidence.drift)

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"samples": self.samples, "judged": self.judged}
        if not self.judged:
            head["note"] = self.note
        else:
            head |= {"psi": self.psi, "drift": self.drift}
        tail = {} if self.confidence is None else {"confidence": self.confidence.to_dict()}
        return head | {
            "classes": [c.to_dict() for c in self.classes],
            "moved_classes": self.moved_classes,
            **tail,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class ValueDrift:
    """Drift of a regression model's predicted values against those on held-out data at
    training (`reference["predictions"]["value"]`), measured as one feature would be."""

    samples: int
    judged: bool
    """False when there were too few predictions to judge (`note` says so)."""
    value: FeatureDrift | None = None
    note: str | None = None

    @property
    def drifted(self) -> bool:
        return self.value is not None and self.value.drift

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"samples": self.samples, "judged": self.judged}
        if self.value is None:
            return head | {"task": "regression", "note": self.note}
        measured = self.value.to_dict()
        del measured["name"]
        return head | {"task": "regression", "drift": self.value.drift, "value": measured}


def value_drift(values: Array, profile: dict[str, Any], t: DriftThresholds) -> ValueDrift:
    """Drift of served predicted `values` (a sample of them) against the reference profile's
    predictions of a regressor (`{"samples", "value": feature_summary}`)."""
    if len(values) < t.min_samples:
        return ValueDrift(
            samples=len(values),
            judged=False,
            note=f"{len(values)} prediction(s), fewer than the {t.min_samples} needed",
        )
    measured = feature_drift("prediction", values, profile["value"], int(profile["samples"]), t)
    return ValueDrift(samples=len(values), judged=True, value=measured)


def feature_drift(
    name: str, values: Array, summary: dict[str, Any], reference_samples: int, t: DriftThresholds
) -> FeatureDrift:
    """PSI and KS of one feature's current values against its reference summary."""
    terms = psi_terms(summary["fractions"], bin_fractions(values, summary["edges"]))
    psi = float(terms.sum())
    ks, p = ks_against_quantiles(values, summary["quantiles"], reference_samples)
    by_psi = psi > t.psi
    by_ks = p < t.ks_alpha and ks > t.ks_statistic
    return FeatureDrift(
        name=name,
        psi=psi,
        ks_statistic=ks,
        ks_pvalue=p,
        reference_mean=summary["mean"],
        current_mean=float(np.mean(values)) if values.size else None,
        drift=bool(by_psi or by_ks),
    )


def categorical_drift(
    name: str, values: Array, summary: dict[str, Any], reference_samples: int, t: DriftThresholds
) -> CategoricalDrift:
    """Category-share drift of one categorical feature (`summary` has `categories` and
    `shares`, see `kiln.data.profile.categorical_summary`)."""
    numeric = feature_drift(name, values, summary, reference_samples, t)
    distinct = np.asarray(summary["categories"], dtype=np.float64)
    reference = [*summary["shares"], 0.0]  # "other": values the reference never had
    counts = category_counts(values, distinct).astype(np.float64)
    current, terms, z = share_changes(reference, counts, reference_samples)
    names = [str(c) for c in summary["categories"]] + ["other"]
    shares = [
        CategoryShare(
            name=names[i],
            reference=float(reference[i]),
            current=float(current[i]),
            contribution=float(terms[i]),
            z=float(z[i]),
            moved=bool(terms[i] > t.class_contribution and z[i] > t.class_z),
        )
        for i in range(len(names))
    ]
    shares.sort(key=lambda c: -c.contribution)
    psi = float(terms.sum())
    total_variation = float(0.5 * np.abs(current - np.asarray(reference)).sum())
    moved = [c.name for c in shares if c.moved]
    return CategoricalDrift(
        **(
            asdict(numeric)
            | {
                "psi": psi,
                "drift": bool(psi > t.psi or (total_variation > t.ks_statistic and moved)),
            }
        ),
        total_variation=total_variation,
        categories=shares,
        moved_categories=moved,
    )


def samples_from_inputs(
    flat: Array, lengths: Array, input_shape: Sequence[int]
) -> tuple[Array, int]:
    """Logged inputs as (samples, *input_shape): `flat` holds the flattened inputs of several
    requests back to back, `lengths` each one's size. A request may carry several samples;
    one whose size is not a whole number of samples (or is unknown: negative, NaN) is left
    out. Returns the samples and the number of requests left out.

    Raises ValueError when `flat` does not hold exactly the values `lengths` count (a caller
    that passed rows without values along)."""
    shape = [int(d) for d in input_shape]
    per_sample = int(np.prod(shape))
    sizes = np.asarray(lengths, dtype=np.float64)
    known = np.isfinite(sizes) & (sizes >= 0)
    counts = np.where(known, sizes, 0).astype(np.int64)
    fits = known & (counts > 0) & (counts % per_sample == 0 if per_sample > 0 else False)
    misfit = int((~fits).sum())
    values = np.asarray(flat, dtype=np.float32)
    if values.size != counts.sum():
        raise ValueError(f"{values.size} logged values for inputs of {counts.sum()} in all")
    if misfit:
        values = values[np.repeat(fits, counts)]
    return values.reshape(-1, *shape), misfit


def input_drift(x: Array, profile: dict[str, Any], t: DriftThresholds) -> InputDrift:
    """Drift of current inputs `x` (samples, *input_shape) per reference feature."""
    if len(x) < t.min_samples:
        return InputDrift(
            samples=len(x),
            judged=False,
            features=[],
            drifted=[],
            note=f"{len(x)} logged input sample(s), fewer than the {t.min_samples} needed "
            "(log more inputs: KILN_TRAFFIC_INPUT_SAMPLE_RATE, or widen --since)",
        )
    names, matrix = features(x, profile)
    summaries = profile["features"]
    rows = [
        (categorical_drift if "categories" in summaries[name] else feature_drift)(
            name, matrix[:, i], summaries[name], int(profile["samples"]), t
        )
        for i, name in enumerate(names)
    ]
    return InputDrift(
        samples=len(x), judged=True, features=rows, drifted=[r.name for r in rows if r.drift]
    )


def prediction_drift(
    class_counts: Sequence[int],
    confidences: Array,
    profile: dict[str, Any],
    class_names: Sequence[str],
    t: DriftThresholds,
) -> PredictionDrift:
    """Drift of the predicted-class shares and of the confidence, against the reference.

    `class_counts` counts every answered request per predicted class; `confidences` may be a
    sample of them (the KS test and the confidence histogram use it)."""
    total = int(sum(class_counts))
    if total < t.min_samples:
        return PredictionDrift(
            samples=total,
            judged=False,
            classes=[],
            moved_classes=[],
            note=f"{total} prediction(s), fewer than the {t.min_samples} needed",
        )
    ref = list(profile["class_fractions"])
    k = max(len(ref), len(class_counts))
    ref += [0.0] * (k - len(ref))
    counts = np.zeros(k)
    counts[: len(class_counts)] = class_counts
    n_ref = int(profile["samples"])
    current, terms, z = share_changes(ref, counts, n_ref)
    names = [class_names[i] if i < len(class_names) else str(i) for i in range(k)]
    classes = [
        ClassShare(
            index=i,
            name=names[i],
            reference=ref[i],
            current=float(current[i]),
            contribution=float(terms[i]),
            z=float(z[i]),
            moved=bool(terms[i] > t.class_contribution and z[i] > t.class_z),
        )
        for i in range(k)
    ]
    psi = float(terms.sum())
    measured = feature_drift("confidence", confidences, profile["confidence"], n_ref, t)
    confidence = ConfidenceDrift(**asdict(measured), samples=len(confidences))
    return PredictionDrift(
        samples=total,
        judged=True,
        classes=classes,
        moved_classes=[c.name for c in classes if c.moved],
        psi=psi,
        drift=bool(psi > t.psi),
        confidence=confidence,
    )
