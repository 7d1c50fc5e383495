"""What the registry knows about a model's versions that evaluation needs: class names and the
reference profile `kiln train` stored in each version's config."""

from __future__ import annotations

from kiln.errors import ModelNotFound
from kiln.evaluate.online import VersionInfo
from kiln.registry import Registry


def version_infos(registry: Registry, model: str) -> dict[int, VersionInfo]:
    """Every registered version of `model` (none when the model is not registered)."""
    try:
        versions = registry.list_versions(model)
    except ModelNotFound:
        return {}
    return {
        v.version: VersionInfo(
            version=v.version,
            class_names=[str(c) for c in v.config.get("class_names") or []],
            reference=dict(v.config.get("reference") or {}),
        )
        for v in versions
    }
