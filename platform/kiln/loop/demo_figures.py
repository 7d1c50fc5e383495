"""What `kiln demo` measured, typed; `DemoFigures.to_dict()` is the object `kiln demo --json`
prints (its keys are a contract: the end-to-end test reads them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kiln.compile import Speedup
from kiln.registry import GateResult


@dataclass(frozen=True)
class FirstVersion:
    """v1: trained on mnist-5k, compiled for onnxruntime, checked against its checkpoint."""

    version: int
    mnist_test_accuracy: float
    parity_max_abs_diff: float | None
    """The engine's largest difference from the checkpoint on held-out digits."""
    parity_top1_agreement: float | None
    speedup_vs_eager: Speedup | None
    """None when the engine was not timed."""
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "mnist_test_accuracy": self.mnist_test_accuracy,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "parity_top1_agreement": self.parity_top1_agreement,
            "speedup_vs_eager": self.speedup_vs_eager.to_dict() if self.speedup_vs_eager else {},
            "train_seconds": self.train_seconds,
        }


@dataclass(frozen=True)
class LabelsImported:
    """The labels file the demo hands in, as `kiln feedback import` took it."""

    imported: int
    matched: int
    """Labels whose request the server had logged."""
    unmatched: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Retrained:
    """v2: retrained from v1's weights on mnist-5k plus the labelled traffic."""

    version: int
    labels_used: int
    """Labelled requests it trained on."""
    excluded_heldout: int
    """Labelled requests left out: their inputs are samples of the held-out test split."""
    mnist_test_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HeldOutFigures:
    """The numbers the held-out gate judged v2 by, and proof that they are held out."""

    dataset: str
    samples: int
    accuracy_v1: float | None
    accuracy_v2: float | None
    in_training_data: int
    """Test samples that are, by content, in what any version trained on (0: held out)."""
    excluded_labelled_requests: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "samples": self.samples,
            "accuracy": {"v1": self.accuracy_v1, "v2": self.accuracy_v2},
            "in_training_data": self.in_training_data,
            "excluded_labelled_requests": self.excluded_labelled_requests,
        }


@dataclass(frozen=True)
class ShiftedAfter:
    """The shifted digits sent after retraining: never labelled, never learned from."""

    samples: int
    in_training_data: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Accuracies:
    """Served accuracy per phase, and the held-out accuracy of v1 and v2."""

    mnist_traffic_v1: float
    shifted_before_retraining: float
    shifted_after_retraining: float
    mnist_heldout_v1: float | None
    mnist_heldout_after_retraining: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DemoFigures:
    """The whole story in numbers."""

    home: Path
    fast: bool
    v1: FirstVersion
    labels: LabelsImported
    drift_detected: bool
    drifted_features: list[str]
    """The first input features that moved (at most 8)."""
    v2: Retrained
    heldout: HeldOutFigures
    shifted_after: ShiftedAfter
    swapped: bool
    """Whether the server answered with v2 within a minute of the promotion."""
    failed_requests: int
    requests: int
    accuracy: Accuracies
    served_versions_after: dict[int, int]
    """Answers per version after the promotion."""
    gates: list[GateResult]
    report: Path
    """The demo's HTML page."""
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "fast": self.fast,
            "v1": self.v1.to_dict(),
            "labels": self.labels.to_dict(),
            "drift_detected": self.drift_detected,
            "drifted_features": self.drifted_features,
            "v2": self.v2.to_dict(),
            "heldout": self.heldout.to_dict(),
            "shifted_after": self.shifted_after.to_dict(),
            "swapped": self.swapped,
            "failed_requests": self.failed_requests,
            "requests": self.requests,
            "accuracy": self.accuracy.to_dict(),
            "served_versions_after": self.served_versions_after,
            "gates": [
                {"name": g.gate, "passed": g.passed, "message": g.message} for g in self.gates
            ],
            "report": str(self.report),
            "duration_s": self.duration_s,
        }
