"""Loading, unloading and hot-swapping versions in the model table.

`ModelLifecycle` serves what it is asked to load, retires what it is asked to unload, and runs
the watcher: every `poll_interval_s` it asks the repository which version each watched alias
names, swaps the new version in when the alias moved, and has the model's rollout followed
(`rollouts`). Opening and retiring versions are `versions.VersionLoader`'s steps; changes for
one model are serialised by its lock, and requests never wait on it (they only read the table).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kiln.errors import FailedPrecondition, InferRequestInvalid, KilnError, ServerShuttingDown
from kiln.registry import parse_reference
from kiln.serving.metrics import ServingMetrics
from kiln.serving.repository import ModelRepository
from kiln.serving.rollouts import RolloutFollower
from kiln.serving.settings import ServingSettings
from kiln.serving.table import LoadedModel, ModelTable, ServedModel
from kiln.serving.versions import StateListener, VersionLoader, failure_reason

log = logging.getLogger("kiln.serving")


class ModelLifecycle:
    """Puts versions into the table and takes them out, including hot swaps."""

    def __init__(
        self,
        table: ModelTable,
        repository: ModelRepository,
        settings: ServingSettings,
        metrics: ServingMetrics,
    ) -> None:
        self.table = table
        self.repository = repository
        self.settings = settings
        self.versions = VersionLoader(repository, settings, metrics)
        self.listeners: list[StateListener] = self.versions.listeners
        """Told of every version state change (the loader's list itself)."""
        self.blocking = self.versions.blocking
        self.rollouts = RolloutFollower(table, repository, self.versions)
        self.stopping = False
        self._watcher: asyncio.Task[None] | None = None

    def watch(self) -> None:
        """Start polling the registry for moved aliases (every `poll_interval_s`)."""
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name="kiln-alias-watcher"
        )

    async def stop(self) -> None:
        """Stop watching, drain and close every version."""
        self.stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.table.routing.clear()
        for name in list(self.table.models):
            async with self.versions.lock(name):
                served = self.table.models.pop(name, None)
                if served is not None:
                    await self._retire_all(served)
        self.versions.close()

    async def load(self, text: str) -> LoadedModel:
        """Serve `text` (`digits`, `digits@candidate`, `digits:3`); returns the loaded version.

        A new model's first reference sets its default version. For a served model, an alias
        reference becomes the one its default follows (swapping now if it points elsewhere);
        a version reference loads that version beside the default.
        """
        if self.stopping:
            raise ServerShuttingDown("the server is shutting down")
        reference = parse_reference(text)
        models = self.table.models
        async with self.versions.lock(reference.name):
            version = await self.blocking(self.repository.resolve, reference)
            served = models.get(reference.name)
            if served is None:
                served = models[reference.name] = ServedModel(reference.name, reference)
                try:
                    loaded = await self.versions.open(reference.name, version)
                except BaseException:
                    del models[reference.name]
                    raise
                served.versions[version] = loaded
                served.default = loaded
            elif reference.version is not None:
                loaded = served.versions.get(version) or await self.versions.open(
                    reference.name, version
                )
                served.versions[version] = loaded
            else:
                served.reference = reference
                served.failed_version = None
                loaded = await self._swap(served, version)
            if reference.version is not None:
                served.pinned.add(version)
            return loaded

    async def unload(self, text: str) -> None:
        """Stop serving a model (`digits`) or one of its versions (`digits:3`), draining first."""
        reference = parse_reference(text)  # the registry's rules, as for load
        if "@" in text:  # a bare name parses as NAME@production: refuse only a written alias
            raise InferRequestInvalid(
                f"unload takes a model name or NAME:VERSION, not an alias ({reference})"
            )
        name = reference.name
        async with self.versions.lock(name):
            served = self.table.served(name)
            if reference.version is None:
                self.table.routing.pop(name, None)
                del self.table.models[name]
                await self._retire_all(served)
                return
            loaded = self.table.loaded_version(name, reference.version)
            if loaded is served.default:
                raise FailedPrecondition(
                    f"{loaded.label} is the version '{name}' serves by default; unload '{name}' "
                    f"to stop serving the model, or load another default first"
                )
            if loaded.version == served.rollout_version:
                raise FailedPrecondition(
                    f"{loaded.label} takes part in {name}'s running rollout; end it first "
                    f"(kiln rollout {name} --off), and the server unloads it"
                )
            del served.versions[loaded.version]
            served.pinned.discard(loaded.version)
            await self.versions.retire(loaded)

    async def production_references(self) -> list[str]:
        """Every registered model that has a `production` version."""
        references = []
        for name in await self.blocking(self.repository.model_names):
            try:
                await self.blocking(self.repository.resolve, parse_reference(name))
            except KilnError:
                log.warning("%s has no production version; not serving it", name)
                continue
            references.append(name)
        return references

    # -- internals ------------------------------------------------------------------------------

    async def _swap(self, served: ServedModel, version: int) -> LoadedModel:
        old = served.default
        if old is not None and old.version == version:
            return old
        # Load and warm the new version BEFORE touching the old one. Until the new engine has
        # proven it runs, the old keeps serving every request: a slow load costs no latency
        # and a bad artifact costs no availability. Only then does the default move (one
        # assignment, atomic on the event loop), and the old version drains what it already
        # queued before its engine closes, so no request fails during the swap.
        new = served.versions.get(version) or await self.versions.open(served.name, version)
        served.versions[version] = new
        routing = self.table.routing.get(served.name)
        if routing is not None and routing.target is new:
            # The rollout's version became the default (promoted during a canary): nothing is
            # left to compare, so stop routing now rather than at the next rollout poll.
            del self.table.routing[served.name]
        served.default = new
        served.failed_version, served.reason = None, ""
        if old is not None:
            log.info("%s now serves version %d (was %d)", served.name, version, old.version)
            # The old default stays while the rollout names it: after promoting the canary,
            # a rollback resumes the canary at once instead of loading it again.
            if old.version not in served.pinned and old.version != served.rollout_version:
                del served.versions[old.version]
                await self.versions.retire(old)
        return new

    async def _retire_all(self, served: ServedModel) -> None:
        await asyncio.gather(*(self.versions.retire(m) for m in served.versions.values()))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            for served in list(self.table.models.values()):
                if served.tracks_alias and served.default is not None:
                    try:
                        await self._follow(served)
                        await self.rollouts.follow(served)
                    except Exception:  # a registry hiccup must not end the watcher
                        log.exception("watching %s failed; trying again next poll", served.name)

    async def _follow(self, served: ServedModel) -> None:
        try:
            version = await self.blocking(self.repository.resolve, served.reference)
        except KilnError as exc:
            log.warning("cannot resolve %s: %s", served.reference, exc)
            return
        current = served.default.version if served.default else None
        if version in (current, served.failed_version):
            return
        async with self.versions.lock(served.name):
            if self.table.models.get(served.name) is not served or served.default is None:
                return  # unloaded or reloaded meanwhile
            try:
                await self._swap(served, version)
            except Exception as exc:
                served.failed_version = version
                served.reason = f"cannot serve {served.name}:{version}: {failure_reason(exc)}"
                log.error("%s moved to %d but stays on %d: %s", served.reference, version,
                          served.default.version, exc)  # fmt: skip
