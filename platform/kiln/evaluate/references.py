"""What the registry knows about a model's versions that evaluation needs: the task, class
names and the reference profile `kiln train` (or `kiln register --dataset`) stored in each
version's config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.errors import ArtifactNotFound, KilnError, ModelNotFound
from kiln.evaluate.version_info import VersionInfo
from kiln.registry import ArtifactKind, Registry
from kiln.traffic.labels import CLASSIFICATION, REGRESSION


def version_infos(registry: Registry, model: str) -> dict[int, VersionInfo]:
    """Every registered version of `model` (none when the model is not registered)."""
    try:
        versions = registry.list_versions(model)
    except ModelNotFound:
        return {}
    infos = {}
    for v in versions:
        tokenizer, problem = None, None
        if v.config.get("text"):
            try:
                tokenizer = tokenizer_file(registry, model, v.version, v.config)
            except KilnError as exc:  # drift then goes without token frequencies, saying why
                problem = str(exc)
        infos[v.version] = VersionInfo(
            version=v.version,
            class_names=[str(c) for c in v.config.get("class_names") or []],
            reference=dict(v.config.get("reference") or {}),
            task=str(v.config.get("task") or CLASSIFICATION),
            tokenizer=tokenizer,
            tokenizer_problem=problem,
        )
    return infos


def tokenizer_file(registry: Registry, name: str, version: int, config: Mapping[str, Any]) -> Path:
    """The file of a text version's tokenizer: its `tokenizer` artifact whose sha256 the
    config records (`text.sha256`), else its latest, verified. Raises `ArtifactNotFound` when
    it has none, `ArtifactCorrupted` when its bytes changed."""
    found = registry.artifacts(name, version, ArtifactKind.TOKENIZER)
    recorded = (config.get("text") or {}).get("sha256")
    matching = [a for a in found if a.sha256 == recorded] or found
    if not matching:
        raise ArtifactNotFound(
            f"{name}:{version} is a text model but has no tokenizer artifact "
            "(kiln models show shows its artifacts)"
        )
    return registry.artifact_file(matching[-1])


def model_classes(registry: Registry, model: str) -> int | None:
    """How many classes `model` has as its registered versions say (the most, when versions
    differ: a label valid for any of them is kept); None when it is not registered or no
    version names its classes. What `kiln feedback import` checks labels against."""
    counts = [info.classes for info in version_infos(registry, model).values() if info.classes]
    return max(counts) if counts else None


def model_task(registry: Registry, model: str) -> str | None:
    """`model`'s task as its registered versions say: "regression" when they all are
    regressors, "classification" when none is, None when it is not registered or its versions
    differ (either kind of feedback is then taken). What `kiln feedback import` checks the
    kind of each row against."""
    tasks = {info.task for info in version_infos(registry, model).values()}
    if tasks == {REGRESSION}:
        return REGRESSION
    return CLASSIFICATION if tasks and REGRESSION not in tasks else None
