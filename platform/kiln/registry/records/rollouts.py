"""Records of canary and shadow rollouts: the state servers poll, and its history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from kiln.errors import InvalidArgument


class RolloutMode(StrEnum):
    """How a model's second version (named by the rollout's alias) takes part in serving."""

    OFF = "off"
    """Production answers every request."""
    CANARY = "canary"
    """The second version answers `percent` of requests instead of production."""
    SHADOW = "shadow"
    """Production answers every request; `percent` of them are also sent to the second
    version, whose answers are logged (route ``shadow``) and never returned."""

    @classmethod
    def parse(cls, value: str) -> RolloutMode:
        """`RolloutMode(value)`, raising `InvalidArgument` with the accepted modes."""
        try:
            return cls(value)
        except ValueError:
            modes = ", ".join(m.value for m in cls)
            raise InvalidArgument(f"unknown rollout mode '{value}'; modes: {modes}") from None


@dataclass(frozen=True, slots=True)
class Rollout:
    """A model's rollout now: what `Registry.rollout` returns and servers poll.

    Servers route by it: in canary mode each request goes to ``name@alias`` with probability
    ``percent / 100``; in shadow mode that share of requests is also copied to it. When
    `version` is None (off, or the alias was removed) or equals the production version,
    there is nothing to route to and production answers everything.
    """

    name: str
    mode: RolloutMode
    percent: float
    """Canary: share of requests answered by the second version; shadow: share copied to it;
    0 when off."""
    alias: str
    """The alias naming the second version (``candidate`` by default)."""
    version: int | None
    """The version `alias` points at now (None when off or when the alias is gone)."""
    actor: str | None
    """Who made the latest change; None when the model never had a rollout."""
    reason: str
    updated_at: datetime | None
    """When the latest change happened (UTC); None when the model never had a rollout."""

    @property
    def active(self) -> bool:
        """True in canary or shadow mode."""
        return self.mode is not RolloutMode.OFF

    def describe(self) -> str:
        """One line for people, e.g. ``canary: 10% of requests to digits@candidate (digits:4)``."""
        if not self.active:
            return "off: production answers every request"
        target = f"{self.name}@{self.alias}"
        if self.version is not None:
            target += f" ({self.name}:{self.version})"
        if self.mode is RolloutMode.CANARY:
            return f"canary: {self.percent:g}% of requests answered by {target}"
        return f"shadow: {self.percent:g}% of requests copied to {target} (answers only logged)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode.value,
            "percent": self.percent,
            "alias": self.alias,
            "version": self.version,
            "actor": self.actor,
            "reason": self.reason,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """One row of a model's rollout history."""

    name: str
    mode: RolloutMode
    percent: float
    alias: str
    candidate_version: int | None
    """The version `alias` pointed at when the change was made (None when it pointed nowhere)."""
    production_version: int | None
    """The version ``production`` pointed at when the change was made."""
    at: datetime
    actor: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode.value,
            "percent": self.percent,
            "alias": self.alias,
            "candidate_version": self.candidate_version,
            "production_version": self.production_version,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
        }
