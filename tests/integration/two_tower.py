"""The two-input, two-output model Kiln did not train (FP32 features (N, 10) + INT64 ids (N, 4)
-> score (N, 1), pooled (N, 3)), registered with `kiln register --module` and compiled: what the
serving and perf_analyzer tests of issue #15 run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

import kiln.registry
from kiln.settings import Settings
from tests.unit import sources_models


def register_two_tower(cli: Any, workdir: Path, settings: Settings, name: str = "tower") -> None:
    """`name`:1 registered from `sources_models.two_tower`, compiled and in production."""
    weights = workdir / "two_tower.safetensors"
    save_file(sources_models.two_tower().eval().state_dict(), str(weights))
    registered = cli(
        "register", name, "--module", "tests.unit.sources_models:two_tower",
        "--weights", str(weights), "--input", "features:FP32:-1,10", "--input", "ids:INT64:-1,4",
        "--task", "regression", "--output", "score", "--output", "pooled", "--max-batch", "16",
    )  # fmt: skip
    assert registered.exit_code == 0, registered.stderr
    compiled = cli("compile", f"{name}:1", "--parity-samples", "64")
    assert compiled.exit_code == 0, compiled.stderr
    with kiln.registry.open(settings=settings) as registry:
        registry.promote(f"{name}:1", gates=[], reason="test")
