"""Eight real processes registering and promoting against one registry at the same time."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kiln.registry
from kiln.registry import AliasMove, Lineage
from kiln.settings import Settings

pytestmark = pytest.mark.both_registries

PROCESSES = 8
ROUNDS = 4


def _worker(home: str, index: int, barrier: Any, out: str) -> None:
    """Register ROUNDS versions; promote each to production and to this worker's own alias."""
    record: dict[str, Any] = {"registered": [], "moves": [], "errors": []}
    try:
        # Every worker opens a registry that does not exist yet: creating the schema races too.
        with kiln.registry.open(settings=Settings(home=Path(home))) as registry:
            barrier.wait(timeout=300)
            for r in range(ROUNDS):
                checkpoint = Path(home) / f"w{index}-r{r}.safetensors"
                checkpoint.write_bytes(os.urandom(256))
                version = registry.register_version(
                    "digits",
                    checkpoint=checkpoint,
                    config={"worker": index, "round": r},
                    metrics={"test_accuracy": 0.9},
                    lineage=Lineage(run_id=f"w{index}-r{r}"),
                )
                record["registered"].append(version.version)
                for alias in ("production", f"worker-{index}"):
                    move = registry.promote(version.ref, alias, actor=f"worker-{index}")
                    record["moves"].append(move.to_dict())
                registry.resolve("digits")
                registry.list_versions("digits")
    except Exception as exc:  # reported to the test, which fails on any
        record["errors"].append(f"{type(exc).__name__}: {exc}")
    Path(out).write_text(json.dumps(record))


def _assert_chain(moves: list[AliasMove]) -> None:
    """Each move starts where the previous one ended: the moves were serialised."""
    assert moves[0].from_version is None
    for before, after in itertools.pairwise(moves):
        assert after.from_version == before.to_version


def test_eight_processes_register_and_promote_at_once(tmp_path: Path, kiln_home: Path) -> None:
    # kiln_home: on PostgreSQL, the workers find the database in KILN_REGISTRY_URL
    home = tmp_path / "home"
    home.mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    outs = [tmp_path / f"worker-{i}.json" for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_worker, args=(str(home), i, barrier, str(outs[i])))
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    records = [json.loads(out.read_text()) for out in outs]
    assert [r["errors"] for r in records] == [[]] * PROCESSES

    numbers = [n for r in records for n in r["registered"]]
    assert sorted(numbers) == list(range(1, PROCESSES * ROUNDS + 1))  # distinct, no gaps

    with kiln.registry.open(settings=Settings(home=home)) as registry:
        production = registry.history("digits", "production")
        assert len(production) == PROCESSES * ROUNDS
        _assert_chain(production)
        assert sorted(m.to_version for m in production) == sorted(numbers)
        stored = {json.dumps(m.to_dict(), sort_keys=True) for m in registry.history("digits")}
        reported = [json.dumps(m, sort_keys=True) for r in records for m in r["moves"]]
        assert len(stored) == len(reported) == 2 * PROCESSES * ROUNDS
        assert stored == set(reported)  # every move any process made is in the history
        for i, record in enumerate(records):
            own = registry.history("digits", f"worker-{i}")
            _assert_chain(own)
            assert [m.to_version for m in own] == record["registered"]
        assert registry.resolve("digits").version == production[-1].to_version
        for version in registry.list_versions("digits"):
            checkpoint = registry.checkpoint("digits", version.version)
            assert registry.artifact_file(checkpoint).stat().st_size == 256


def test_eight_kiln_promote_commands_at_once(tmp_path: Path, kiln_home: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        for i in range(PROCESSES):
            checkpoint = tmp_path / f"c{i}.safetensors"
            checkpoint.write_bytes(os.urandom(64))
            registry.register_version(
                "digits", checkpoint=checkpoint, config={}, metrics={"test_accuracy": 0.9}
            )
    kiln_exe = Path(sys.executable).with_name("kiln")
    env = {**os.environ, "KILN_HOME": str(home)}  # and KILN_REGISTRY_URL on PostgreSQL
    commands = [
        [
            str(kiln_exe),
            "promote",
            f"digits:{i + 1}",
            "--reason",
            f"p{i}",
            "--no-eval-gates",
            "--json",
        ]
        for i in range(PROCESSES)
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, _out, err in results:
        assert code == 0, err
        assert "locked" not in err.lower()
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        moves = registry.history("digits", "production")
    assert sorted(m.reason for m in moves) == sorted(f"p{i}" for i in range(PROCESSES))
    _assert_chain(moves)
