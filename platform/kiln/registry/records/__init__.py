"""The registry's records: immutable values returned by `Registry` methods, by kind.

`versions` (versions, artifacts, lineage, model summaries, import results), `aliases` (gate
results and decisions, alias moves), `rollouts` (canary and shadow state and history) and
`garbage` (what `gc` removed). `to_dict()` gives a JSON-ready form, used by `--json` output
and export bundles.
"""

from __future__ import annotations

from kiln.registry.records.aliases import AliasMove, GateDecision, GateResult
from kiln.registry.records.garbage import GcEntry, GcReport
from kiln.registry.records.rollouts import Rollout, RolloutChange, RolloutMode
from kiln.registry.records.versions import (
    Artifact,
    ArtifactKind,
    ImportResult,
    Lineage,
    ModelSummary,
    ModelVersion,
    canonical_json,
)

__all__ = [
    "AliasMove",
    "Artifact",
    "ArtifactKind",
    "GateDecision",
    "GateResult",
    "GcEntry",
    "GcReport",
    "ImportResult",
    "Lineage",
    "ModelSummary",
    "ModelVersion",
    "Rollout",
    "RolloutChange",
    "RolloutMode",
    "canonical_json",
]
