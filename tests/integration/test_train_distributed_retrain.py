"""`kiln retrain --nproc 2` through the real `kiln` console script: the ranks train on the
same mix of data and labelled traffic, rank 0 alone registers, compiles and moves the alias,
and the new version records how it was trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kiln.registry
from kiln.settings import Settings
from tests.conftest import run_kiln

# digits:1 in production and the digits test split sent to it, every request labelled; each
# test works on its own copy (`home`).
from tests.integration.test_loop import home, labelled_home  # noqa: F401

pytestmark = pytest.mark.slow
TIMEOUT_S = 240


def test_retrain_with_two_processes_registers_one_version(home: Path) -> None:  # noqa: F811
    runs_before = set((home / "runs").iterdir())
    result = run_kiln(
        "retrain", "digits", "--min-labels", "50", "--epochs", "1", "--no-progress", "--json",
        "--nproc", "2", timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert payload["version"] == "digits:2" and payload["parent"] == "digits:1"
    assert payload["alias"] == "candidate"
    with kiln.registry.open(settings=Settings()) as registry:
        assert [v.version for v in registry.list_versions("digits")] == [1, 2]
        v2 = registry.get_version("digits", 2)
        assert registry.aliases("digits")["candidate"] == 2
    distributed = v2.config["train"]["distributed"]
    assert distributed == {"world_size": 2, "backend": "gloo", "global_batch": 64}
    assert v2.lineage is not None and v2.lineage.parent_version == 1
    assert v2.config["retrain"]["trained_on"] == payload["trained_on"]
    # One run folder, rank 0's, and its summary says how it was trained.
    (run,) = set((home / "runs").iterdir()) - runs_before
    assert run.name == v2.lineage.run_id
    assert json.loads((run / "summary.json").read_text())["distributed"] == distributed
