"""A finished training run becomes a registry version: the one way `kiln train --name`,
retraining, the demo and the tests register what the trainer made.

The checkpoint describes itself (`CheckpointConfig`), so the version's config is that
config, its metrics the test metrics it records, and its lineage the data set, data
fingerprint and run of the result: nothing a caller could get out of step.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

from kiln.registry import ArtifactKind, Lineage, ModelVersion, Registry
from kiln.train.checkpoint import TOKENIZER
from kiln.train.trainer import TrainResult


def register_result(
    registry: Registry,
    name: str,
    result: TrainResult,
    *,
    parent: ModelVersion | None = None,
    extra_config: Mapping[str, Any] | None = None,
    git_commit: str | None = None,
    description: str = "",
) -> ModelVersion:
    """Register `result`'s best checkpoint as the next version of `name` and return it.

    `parent` is the version it was trained from or replaces (lineage); `extra_config` adds
    entries to the version's config beside the checkpoint's (retraining records its window
    and counts under "retrain"); `git_commit` is the source commit that trained it, when
    known (`source_commit()` for the working directory). A text model's tokenizer
    (`tokenizer.json` beside the checkpoint) is registered with it as its "tokenizer" artifact.
    Raises what `Registry.register_version` and `Registry.add_artifact` raise.
    """
    version = registry.register_version(
        name,
        checkpoint=result.checkpoint,
        config=result.config.model_dump() | dict(extra_config or {}),
        metrics=result.config.metrics,
        lineage=Lineage(
            dataset=result.dataset.name,
            data_fingerprint=result.dataset.fingerprint,
            parent_version=parent.version if parent is not None else None,
            run_id=result.run_id,
            git_commit=git_commit,
        ),
        description=description,
    )
    if result.config.text is not None:
        # The file is the tokenizer's canonical JSON, so the artifact's sha256 (over the
        # file's bytes) is the config's text.sha256: serving checks one against the other.
        registry.add_artifact(
            name,
            version.version,
            kind=ArtifactKind.TOKENIZER,
            path=result.checkpoint.parent / TOKENIZER,
        )
    return version


def source_commit() -> str | None:
    """The git commit of the working directory, when it is a git checkout (None otherwise)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
