"""Fixtures shared by the unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest


class Clock:
    """A controllable UTC clock, so times in the history are exact."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> datetime:
        self.now += timedelta(minutes=minutes)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()
