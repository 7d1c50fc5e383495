"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kiln.registry
from kiln.settings import Settings


@pytest.fixture
def seeded(settings: Settings, tmp_path: Path) -> Settings:
    """A KILN_HOME with digits:1-3 (a 128-byte checkpoint each), production -> 1."""
    with kiln.registry.open(settings=settings) as registry:
        for i in range(1, 4):
            ckpt = tmp_path / f"ckpt-{i}.safetensors"
            ckpt.write_bytes(os.urandom(128))
            registry.register_version("digits", checkpoint=ckpt, config={"i": i}, metrics={})
        registry.promote("digits:1", gates=[])
    return settings
