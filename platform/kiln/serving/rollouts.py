"""Following a model's rollout (canary or shadow) from the registry into the model table.

Each poll of the alias watcher asks `RolloutFollower.follow` to make the table do what the
model's rollout says. It loads and warms the rollout's version before any request is routed
to it (`ModelTable.routing`), moves the routing when the rollout's alias moves, and when the
rollout ends (or its version becomes the default) stops routing first, then drains and
unloads the version unless it is pinned or is the default. A version that cannot load leaves
the default answering everything; the reason shows in the repository index.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from kiln.errors import KilnError
from kiln.serving.repository import ModelRepository, RolloutState
from kiln.serving.table import ModelTable, Routing, ServedModel
from kiln.serving.versions import VersionLoader, failure_reason
from kiln.traffic import Route

log = logging.getLogger("kiln.serving")


class RolloutTarget(NamedTuple):
    """What a running rollout asks of a served model: `percent`% of its requests routed
    (`route`) to `version`."""

    route: Route
    percent: float
    version: int

    @classmethod
    def of(cls, routing: Routing) -> RolloutTarget:
        """What the table's `routing` does now."""
        return cls(routing.route, routing.percent, routing.target.version)


class RolloutFollower:
    """Keeps each served model's routing in step with its rollout in the repository."""

    def __init__(
        self, table: ModelTable, repository: ModelRepository, versions: VersionLoader
    ) -> None:
        self.table = table
        self.repository = repository
        self.versions = versions

    async def follow(self, served: ServedModel) -> None:
        """Read `served`'s rollout and change the table where it does not do so already."""
        try:
            state = await self.versions.blocking(self.repository.rollout, served.name)
        except KilnError as exc:
            log.warning("cannot read the rollout of %s: %s", served.name, exc)
            return
        if self._settled(served, state):
            return
        async with self.versions.lock(served.name):
            if self.table.models.get(served.name) is not served or served.default is None:
                return  # unloaded or reloaded meanwhile
            await self._apply(served, state)

    def _settled(self, served: ServedModel, state: RolloutState | None) -> bool:
        """True when the table already does what `state` asks (the common, lock-free case)."""
        wanted = _wanted(served, state)
        routing = self.table.routing.get(served.name)
        if wanted is None:
            kept = served.rollout_version == _kept(served, state)
            return routing is None and kept and not served.rollout_reason
        if wanted.version == served.rollout_failed:
            return True
        return routing is not None and RolloutTarget.of(routing) == wanted

    async def _apply(self, served: ServedModel, state: RolloutState | None) -> None:
        name = served.name
        wanted = _wanted(served, state)
        if wanted is None:
            served.rollout_failed, served.rollout_reason = None, ""
            await self._end(served, keep=_kept(served, state))
            return
        assert state is not None
        route, percent, version = wanted
        if version == served.rollout_failed:
            return
        target = served.versions.get(version)
        if target is None:
            # Load and warm it BEFORE routing anything to it: until it has proven it runs,
            # the default answers every request, as during a hot swap.
            try:
                target = await self.versions.open(name, version)
            except Exception as exc:
                served.rollout_failed = version
                served.rollout_reason = (
                    f"the {route} cannot load {name}:{version} ({name}@{state.alias}): "
                    f"{failure_reason(exc)}; "
                    f"version {served.default.version if served.default else '?'} answers "
                    f"every request"
                )
                log.error("%s: %s", name, served.rollout_reason)
                await self._end(served)  # an older rollout version is not the rollout
                return
            served.versions[version] = target
        previous = served.rollout_version
        self.table.routing[name] = Routing(route, target, percent)
        served.rollout_version = version
        served.rollout_failed, served.rollout_reason = None, ""
        log.info("%s: %s of %g%% of requests to version %d", name, route, percent, version)
        if previous is not None and previous != version:
            await self._release(served, previous)

    async def _end(self, served: ServedModel, keep: int | None = None) -> None:
        """Stop routing to the rollout's version, then drain and unload it if nothing else
        keeps it (the default, a pinned reference). `keep`: the rollout names the default,
        which stays marked as the rollout's version (see `_kept`)."""
        if self.table.routing.pop(served.name, None) is not None:
            log.info("%s: rollout routes nothing; the default answers every request", served.name)
        previous, served.rollout_version = served.rollout_version, keep
        if previous is not None and previous != keep:
            await self._release(served, previous)

    async def _release(self, served: ServedModel, version: int) -> None:
        loaded = served.versions.get(version)
        if loaded is None or loaded is served.default or version in served.pinned:
            return
        del served.versions[version]
        await self.versions.retire(loaded)


def _wanted(served: ServedModel, state: RolloutState | None) -> RolloutTarget | None:
    """What a rollout asks of `served`; None when it routes nothing: off, its alias names no
    version, or that version is the default already."""
    if state is None or state.version is None or served.default is None:
        return None
    if state.version == served.default.version:
        return None
    return RolloutTarget(state.route, state.percent, state.version)


def _kept(served: ServedModel, state: RolloutState | None) -> int | None:
    """The default's version when a running rollout names it (the candidate was promoted):
    nothing is routed, but should the default move away (a rollback), the version stays loaded
    and the rollout resumes without loading it again. None otherwise."""
    if state is None or served.default is None or state.version != served.default.version:
        return None
    return state.version
