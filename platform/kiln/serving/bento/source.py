"""Where the BentoML service's model comes from: Kiln's registry, or BentoML's model store.

Registry mode (`KILN_MODEL=digits@production`, or the registry's only model) follows the alias
and hot-swaps like `kiln serve`. Store mode (`KILN_BENTO_MODEL=kiln-digits:v3`, or the only
`kiln-*` model in the store, which is what a built Bento holds) serves that one version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import make_url

from kiln.errors import ModelNotFound
from kiln.registry import parse_reference
from kiln.serving.bento.store import StoreRepository, find_exported
from kiln.serving.repository import ModelRepository, RegistryRepository
from kiln.settings import Settings
from kiln_engines import EngineOptions


@dataclass
class ModelSource:
    repository: ModelRepository
    reference: str
    """What the serving core loads: `digits@production`, `digits:3`."""
    class_names: Callable[[int], list[str]]
    """A version's class names (empty when unknown)."""
    task: Callable[[int], str]
    """A version's task, `classification` (also when unknown) or `regression`: whether its
    answers are classes or values."""
    close: Callable[[], None]
    description: str
    """Where the model comes from, safe to show clients (`/model_info`): the kind of registry
    or store, never a path, host or credential."""
    location: str
    """The same for the server log: the registry URL (password hidden) or the store entry."""


def from_registry(reference: str | None, settings: Settings, options: EngineOptions,
                  engine_kind: str | None) -> ModelSource:  # fmt: skip
    import kiln.registry

    registry = kiln.registry.open(settings=settings)
    if reference is None:
        names = [m.name for m in registry.list_models()]
        if len(names) != 1:
            registry.close()
            raise ModelNotFound(
                "set KILN_MODEL to the model to serve (NAME, NAME@ALIAS or NAME:VERSION); "
                f"the registry at {settings.home} holds "
                + (", ".join(names) if names else "no models: train one with kiln train --name")
            )
        reference = names[0]
    parsed = parse_reference(reference)

    @lru_cache(maxsize=32)
    def config(version: int) -> dict[str, Any]:
        return dict(registry.get_version(parsed.name, version).config)

    def class_names(version: int) -> list[str]:
        return [str(c) for c in config(version).get("class_names", [])]

    url = make_url(settings.resolved_registry_url)
    return ModelSource(
        RegistryRepository(registry, options=options, engine_kind=engine_kind),
        str(parsed),
        class_names,
        lambda version: task_of(config(version)),
        registry.close,
        f"kiln registry ({url.get_backend_name()})",
        f"registry {url.render_as_string(hide_password=True)}",
    )


def from_store(tag: str | None, options: EngineOptions) -> ModelSource:
    repository = StoreRepository(find_exported(tag), options)
    names = [str(c) for c in repository.manifest.get("class_names", [])]
    task = task_of(repository.manifest.get("config") or {})
    where = f"BentoML model store ({repository.manifest['source']})"
    return ModelSource(
        repository,
        f"{repository.name}:{repository.version}",
        lambda _version: names,
        lambda _version: task,
        lambda: None,
        where,
        where,
    )


def task_of(config: Mapping[str, Any]) -> str:
    """A version config's task; configs from before regression existed are classifiers'."""
    return "regression" if config.get("task") == "regression" else "classification"


def open_source(
    *,
    reference: str | None,
    store_tag: str | None,
    settings: Settings,
    options: EngineOptions,
    engine_kind: str | None = None,
) -> ModelSource:
    """Registry mode unless a store tag is named or there is no registry to serve from."""
    if store_tag:
        return from_store(store_tag, options)
    has_registry = settings.registry_url is not None or (settings.home / "registry.db").exists()
    if reference is not None or has_registry:
        return from_registry(reference, settings, options, engine_kind)
    return from_store(None, options)
