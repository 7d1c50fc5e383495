"""The one rule for labels: a label is a class index of its model.

Every way labels arrive (gRPC, HTTP, files) checks them with `label_problem`, and every
reader of feedback applies the same rule (`kiln.traffic.validity.label_in_range`).
"""

from __future__ import annotations

MAX_LABEL = 2**31 - 1
"""The largest label accepted when the model's classes are not known where it arrives: labels
are class indices, and every reader sizes by the model's own classes, never by a label."""


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


def shown_label(label: int) -> str:
    """`label` for a message: whole up to 24 digits, else its first digits and its length
    (an echoed 4,000-digit label would make a 4 KB reason)."""
    if label.bit_length() <= 80:
        return str(label)
    digits = str(label) if label.bit_length() < 14_000 else ""
    if not digits:
        return "(a number of over 4,000 digits)"
    return f"{digits[:12]}... ({len(digits.lstrip('-'))} digits)"
