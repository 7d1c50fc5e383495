"""`kiln gc` through the real CLI: --dry-run, the refusal rule, and killed training runs.

The rule: gc deletes at most half of the stored artifact blobs without --yes. More than half
(all of them when the registry references none, as after registry.db was replaced) is
refused with nothing deleted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiln.settings import Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.both_registries


def _blobs(home: Path) -> set[str]:
    return {p.name for p in (home / "artifacts" / "sha256").glob("??/*") if p.is_file()}


def test_dry_run_lists_what_would_go_and_deletes_nothing(
    cli: Any, seeded: Settings, kiln_home: Path
) -> None:
    assert cli("models", "delete", "digits:3").exit_code == 0
    before = _blobs(kiln_home)
    planned = cli("gc", "--dry-run", "--json")
    assert planned.exit_code == 0, planned.stderr
    report = planned.json()
    assert report["dry_run"] is True and report["confirmation_needed"] is None
    [entry] = report["entries"]
    assert entry["kind"] == "blob" and entry["bytes"] == 128 and entry["name"] in before
    assert report["freed_bytes"] == 128 and report["kept_blobs"] == 2
    assert _blobs(kiln_home) == before
    human = cli("gc", "--dry-run")
    assert human.exit_code == 0 and "would remove 1 unreferenced blobs" in human.stdout
    assert entry["name"][:16] in human.stdout.replace("\n", "").replace("│", "")
    done = cli("gc", "--json").json()
    assert done["dry_run"] is False and done["removed_blobs"] == [entry["name"]]
    assert _blobs(kiln_home) == before - {entry["name"]}


def test_gc_refuses_when_the_registry_references_none_of_the_blobs(
    cli: Any,
    seeded: Settings,
    kiln_home: Path,
    registry_url: str | None,
    switch_home: Callable[[Path], None],
) -> None:
    # What a user does after "fixing" a broken registry by moving it away: a new, empty
    # registry is created, and every blob looks unreferenced. (On PostgreSQL: the blob store
    # pointed at an empty database.)
    if registry_url is None:
        (kiln_home / "registry.db").rename(kiln_home / "registry.db.broken")
    else:
        switch_home(kiln_home)
    before = _blobs(kiln_home)
    assert len(before) == 3
    refused = cli("gc")
    assert refused.exit_code == 2, (refused.stdout, refused.stderr)
    message = " ".join(refused.stderr.split())
    assert "references none of the 3 stored artifact blobs" in message
    assert "--dry-run" in message and "--yes" in message and "nothing was deleted" in message
    as_json = cli("gc", "--json")
    assert as_json.exit_code == 2
    assert as_json.json()["error"]["code"] == "failed_precondition"
    assert _blobs(kiln_home) == before
    planned = cli("gc", "--dry-run", "--json").json()
    assert len(planned["removed_blobs"]) == 3 and planned["confirmation_needed"]
    assert _blobs(kiln_home) == before
    forced = cli("gc", "--yes", "--json")
    assert forced.exit_code == 0, forced.stderr
    assert len(forced.json()["removed_blobs"]) == 3 and _blobs(kiln_home) == set()


def test_gc_refuses_to_delete_more_than_half_without_yes(
    cli: Any, seeded: Settings, kiln_home: Path
) -> None:
    for ref in ("digits:2", "digits:3"):
        assert cli("models", "delete", ref).exit_code == 0
    refused = cli("gc")
    assert refused.exit_code == 2
    assert "2 of the 3 stored artifact blobs" in " ".join(refused.stderr.split())
    assert len(_blobs(kiln_home)) == 3
    assert len(cli("gc", "-y", "--json").json()["removed_blobs"]) == 2
    assert len(_blobs(kiln_home)) == 1
    assert cli("gc", "--json").json()["removed_blobs"] == []  # nothing left to refuse


# -- run folders --------------------------------------------------------------------------------


def _run(runs: Path, name: str, files: dict[str, str], age_s: float = 0) -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(text)
    if age_s:
        then = time.time() - age_s
        for path in [*folder.iterdir(), folder]:
            os.utime(path, (then, then))
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_gc_removes_runs_that_never_finished_and_keeps_the_rest(cli: Any, kiln_home: Path) -> None:
    runs = kiln_home / "runs"
    here = socket.gethostname()
    day = 24 * 3600
    killed = _run(
        runs,
        "killed",
        {
            "metrics.jsonl": '{"epoch": 1}\n',
            "process.json": json.dumps({"host": here, "pid": _dead_pid()}),
        },
    )
    old = _run(runs, "old-no-owner", {"metrics.jsonl": ""}, age_s=2 * day)
    foreign_old = _run(
        runs,
        "other-host-old",
        {
            "process.json": json.dumps({"host": "elsewhere", "pid": 1}),
        },
        age_s=2 * day,
    )
    kept = {
        _run(runs, "finished", {"metrics.jsonl": "", "summary.json": "{}"}, age_s=30 * day),
        _run(
            runs,
            "training-now",
            {
                "metrics.jsonl": "",
                "process.json": json.dumps({"host": here, "pid": os.getpid()}),
            },
            age_s=2 * day,
        ),
        _run(runs, "recent-no-owner", {"metrics.jsonl": ""}),
        _run(
            runs,
            "other-host-recent",
            {
                "process.json": json.dumps({"host": "elsewhere", "pid": 1}),
            },
        ),
    }
    planned = cli("gc", "--dry-run", "--json")
    assert planned.exit_code == 0, planned.stderr
    report = planned.json()
    doomed = {killed.name, old.name, foreign_old.name}
    assert set(report["removed_runs"]) == doomed
    reasons = {e["name"]: e["reason"] for e in report["entries"] if e["kind"] == "run"}
    assert "is gone" in reasons["killed"] and "unchanged for 48 h" in reasons["old-no-owner"]
    assert all(p.is_dir() for p in (killed, old, foreign_old))
    done = cli("gc", "--json").json()
    assert set(done["removed_runs"]) == doomed
    assert {p for p in runs.iterdir()} == kept


def test_a_killed_kiln_train_is_collected_but_a_running_one_is_not(
    cli: Any, kiln_home: Path
) -> None:
    finished = cli("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--json")
    assert finished.exit_code == 0, finished.stderr
    done_dir = Path(finished.json()["run_dir"])
    assert (done_dir / "summary.json").is_file()

    exe = Path(sys.executable).with_name("kiln")
    args = ["train", "--dataset", "mnist-5k", "--model", "cnn", "--epochs", "50", "--no-progress"]
    proc = subprocess.Popen(
        [str(exe), *args],
        env={**os.environ, "KILN_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        runs = kiln_home / "runs"
        assert wait_until(
            lambda: any(runs.glob("*/metrics.jsonl")) and len(list(runs.iterdir())) == 2, 120
        )
        [live] = [p for p in runs.iterdir() if p != done_dir]
        while_training = cli("gc", "--json").json()
        assert while_training["removed_runs"] == [] and live.is_dir()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert not (live / "summary.json").exists()
    collected = cli("gc", "--json").json()
    assert collected["removed_runs"] == [live.name]
    assert not live.exists() and (done_dir / "summary.json").is_file()


def test_the_cli_knows_the_trainers_run_markers() -> None:
    from kiln.cli import train as cli_train
    from kiln.train import trainer

    assert cli_train.RUN_FINISHED == trainer.RUN_FINISHED
    assert cli_train.RUN_PROCESS == trainer.RUN_PROCESS
