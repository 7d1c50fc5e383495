"""Records of alias moves: each gate's result, the decision they add up to, and the move."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict on one promotion."""

    gate: str
    passed: bool
    numbers: dict[str, float | None]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "numbers": self.numbers,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        return cls(
            gate=str(data["gate"]),
            passed=bool(data["passed"]),
            numbers=dict(data.get("numbers") or {}),
            message=str(data.get("message", "")),
        )


@dataclass(frozen=True, slots=True)
class GateDecision:
    """All gates' verdicts on one promotion, and whether a failure was overridden."""

    results: tuple[GateResult, ...] = ()
    forced: bool = False

    @property
    def passed(self) -> bool:
        """True when every gate passed (vacuously true when no gate ran)."""
        return all(r.passed for r in self.results)

    def summary(self) -> str:
        if not self.results:
            return "no gates"
        verdict = "passed" if self.passed else ("failed, forced" if self.forced else "failed")
        return f"{verdict}: " + "; ".join(f"{r.gate}: {r.message}" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "forced": self.forced,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateDecision:
        return cls(
            results=tuple(GateResult.from_dict(r) for r in data.get("results", [])),
            forced=bool(data.get("forced", False)),
        )


@dataclass(frozen=True, slots=True)
class AliasMove:
    """One row of an alias's history: it moved from one version to another."""

    name: str
    alias: str
    from_version: int | None
    """None when the alias was created by this move."""
    to_version: int
    at: datetime
    """When it moved, timezone-aware UTC."""
    actor: str
    reason: str
    action: str
    """``promote`` or ``rollback``."""
    gate: GateDecision | None
    """The gate decision; None for rollbacks, which run no gates."""

    @property
    def forced(self) -> bool:
        """True when a failed gate was overridden (``--force``); the gate decision says so."""
        return self.gate is not None and self.gate.forced

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
            "action": self.action,
            "gate": self.gate.to_dict() if self.gate else None,
            "forced": self.forced,
        }
