"""The inputs parity judges a version's engines on, and INT8 calibrates them with.

A version that records a data set (every trained version; a registered one given
`--dataset`) is judged on that data set's test split, reloaded with the recorded split, and
calibrated on its training split. A registered version without one has no real held-out data:
its engines are judged on inputs drawn from the signature alone (`kiln.sources.tensors`), and
the compile report says so. A text version's texts are tokenised by its own tokenizer, each
split padded to its longest text (`recorded_text`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.compile.text import encode
from kiln.data import load_recorded
from kiln.errors import DatasetInvalid, DatasetNotFound, FailedPrecondition
from kiln.settings import Settings
from kiln.sources.tensors import random_like
from kiln.text import TEXT_INPUT, TextTokenizer
from kiln_engines import Signature

RANDOM_LENGTH = 6
"""The length a dynamic non-batch axis gets in signature-drawn held-out inputs (parity's
random set then uses another)."""


@dataclass
class HeldOut:
    inputs: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray] | None = None
    """Training inputs for INT8 calibration (None: no real data, no int8)."""
    notes: list[str] = field(default_factory=list)


def recorded(config: Mapping[str, Any], ref: str, input_name: str, settings: Settings) -> HeldOut:
    """The test split (held out) and training split (calibration) of the data set `config`
    records; `FailedPrecondition` when it cannot be loaded here."""
    name = str(config.get("dataset"))
    try:
        dataset = load_recorded(
            name, config.get("split") or {}, settings, seed=int(config.get("seed", 0))
        )
    except (DatasetNotFound, DatasetInvalid) as exc:
        raise FailedPrecondition(
            f"cannot verify {ref}: its data set '{name}' is not available here "
            f"({exc.message}); parity needs held-out real samples from it"
        ) from exc
    notes = []
    fingerprint = config.get("data_fingerprint")
    if fingerprint and dataset.fingerprint != fingerprint:
        notes.append(
            f"data set '{name}' changed since training (fingerprint differs); its "
            "current test split was used as held-out data"
        )
    return HeldOut({input_name: dataset.test.x}, {input_name: dataset.train.x}, notes)


def recorded_text(
    config: Mapping[str, Any], ref: str, tokenizer: TextTokenizer, settings: Settings
) -> HeldOut:
    """`recorded` for a text version: its test split's texts (held out) and training split's
    (calibration) as `input_ids` and `attention_mask`, tokenised by `tokenizer`."""
    found = recorded(config, ref, TEXT_INPUT, settings)
    calibration = found.calibration
    return HeldOut(
        encode(tokenizer, found.inputs[TEXT_INPUT]),
        encode(tokenizer, calibration[TEXT_INPUT]) if calibration is not None else None,
        found.notes,
    )


def for_signature(
    config: Mapping[str, Any], ref: str, signature: Signature, settings: Settings, count: int
) -> HeldOut:
    """Held-out inputs for a registered (not trained) version, with the data set's dtype made
    the input's; drawn from the signature when it records no data set."""
    if config.get("dataset"):
        spec = signature.inputs[0]
        found = recorded(config, ref, spec.name, settings)
        found.inputs = {spec.name: found.inputs[spec.name].astype(spec.dtype, copy=False)}
        if found.calibration is not None:
            found.calibration = {
                spec.name: found.calibration[spec.name].astype(spec.dtype, copy=False)
            }
        return found
    return HeldOut(
        random_like(
            signature.inputs, count, RANDOM_LENGTH, seed=0, ranges=config.get("input_ranges")
        ),
        None,
        [
            f"{ref} was registered without --dataset: no real held-out data was available, so "
            f"parity compared the engines with the source on {count} random inputs drawn from "
            "the signature (floats standard normal, integers 0..9, or the --input-range given "
            "at registration) and on a second random set; "
            "register with --dataset to verify on real data and calibrate int8"
        ],
    )
