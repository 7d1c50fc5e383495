"""What evaluation needs to know about a served version, from the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.traffic.labels import CLASSIFICATION, REGRESSION


@dataclass(frozen=True)
class VersionInfo:
    """What evaluation needs to know about a served version (from the registry)."""

    version: int
    class_names: list[str] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    """The version's class count when known otherwise than by its names (its output width)."""
    task: str = CLASSIFICATION
    """"classification" or "regression" (`config["task"]`; absent means classification)."""
    tokenizer: Path | None = None
    """A text version's tokenizer file (its verified `tokenizer` artifact); None for other
    versions, or when it could not be read (`tokenizer_problem` says why)."""
    tokenizer_problem: str | None = None

    @property
    def text(self) -> bool:
        """A text version with a text reference profile (`kiln.text.profile`)."""
        return bool(self.reference.get("text"))

    @property
    def regression(self) -> bool:
        return self.task == REGRESSION

    @property
    def classes(self) -> int | None:
        """How many classes the version has, when the registry says: labels and predictions
        are checked against it, and nothing is sized by a value beyond it."""
        return self.num_classes or len(self.class_names) or None
