"""The one rule for ground truth: a classifier's feedback is a label (a class index of its
model), a regressor's is a value (a finite number); every feedback row carries exactly one.

Every way feedback arrives (gRPC, HTTP, files) checks it with `feedback_problem` (labels alone
with `label_problem`), and every reader of feedback applies the same rule
(`kiln.traffic.validity.label_in_range`, `value_is_finite`).
"""

from __future__ import annotations

import math

MAX_LABEL = 2**31 - 1
"""The largest label accepted when the model's classes are not known where it arrives: labels
are class indices, and every reader sizes by the model's own classes, never by a label."""

CLASSIFICATION = "classification"
REGRESSION = "regression"
"""A version's task (`config["task"]`; absent means classification): which feedback it takes."""


def label_problem(label: int, num_classes: int | None = None) -> str | None:
    """Why `label` is not a class index of a model with `num_classes` classes; None if it is.

    The one rule for every way labels arrive (gRPC, HTTP, files) and every reader.
    """
    valid = f"0-{num_classes - 1}" if num_classes is not None else f"0-{MAX_LABEL}"
    if label < 0:
        return f"label {shown_label(label)} is negative; labels are class indices from 0 ({valid})"
    if num_classes is not None and label >= num_classes:
        return (
            f"label {shown_label(label)} is out of range: the model has {num_classes} classes, "
            f"valid labels are {valid}"
        )
    if label > MAX_LABEL:
        return f"label {shown_label(label)} is out of range: labels are class indices {valid}"
    return None


def value_problem(value: float) -> str | None:
    """Why `value` cannot be a regressor's true value (NaN or infinite); None if it can."""
    if math.isfinite(value):
        return None
    return (
        f"value {value} is not a finite number: a regression model's feedback is its true "
        "target, a finite float"
    )


def feedback_problem(
    label: int | None,
    value: float | None,
    task: str | None = None,
    num_classes: int | None = None,
) -> str | None:
    """Why feedback (`label` or `value`) cannot be kept for a model of `task` (None: not known
    where it arrives, either kind is taken); None when it can.

    A classifier takes a label (`label_problem` against `num_classes`), a regressor a finite
    value; exactly one of the two must be given, and the message says which one to send.
    """
    if label is not None and value is not None:
        return (
            "feedback carries both a label and a value: send a label (class index) for a "
            "classification model or a value for a regression model, not both"
        )
    if label is None and value is None:
        return (
            "feedback carries neither a label nor a value: send the true class index as label "
            "(classification) or the true number as value (regression)"
        )
    if task == REGRESSION and label is not None:
        return (
            f"the model is a regression model: send its true value as value, not a label "
            f"(got label {shown_label(label)})"
        )
    if task not in (None, REGRESSION) and value is not None:
        return (
            f"the model is a classification model: send the true class index as label, not a "
            f"value (got value {value:g})"
        )
    if label is not None:
        return label_problem(label, num_classes)
    return value_problem(value) if value is not None else None


def shown_label(label: int) -> str:
    """`label` for a message: whole up to 24 digits, else its first digits and its length
    (an echoed 4,000-digit label would make a 4 KB reason)."""
    if label.bit_length() <= 80:
        return str(label)
    digits = str(label) if label.bit_length() < 14_000 else ""
    if not digits:
        return "(a number of over 4,000 digits)"
    return f"{digits[:12]}... ({len(digits.lstrip('-'))} digits)"
