"""A registration killed with SIGKILL at its worst moments leaves no visible version.

The child process holds at a named point (it prints the point's name and waits on stdin);
the test waits for that line, checks what another process sees, then kills it. No sleeps.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kiln.registry
from kiln.settings import Settings

pytestmark = pytest.mark.both_registries

CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from sqlalchemy import event
    import kiln.registry
    from kiln.registry import blobs
    from kiln.settings import Settings

    point, home, checkpoint = sys.argv[1:4]
    registry = kiln.registry.open(settings=Settings(home=Path(home)))

    def hold():
        print(point, flush=True)
        sys.stdin.readline()  # the parent kills us while we wait here

    if point == "copying":  # bytes written to the temporary file, not yet renamed
        fsync = os.fsync
        def held_fsync(fd):
            hold()
            fsync(fd)
        blobs.os.fsync = held_fsync
    elif point == "blob-stored":  # blob in place, no transaction begun
        put_file = blobs.LocalBlobStore.put_file
        def held_put_file(self, source):
            stored = put_file(self, source)
            hold()
            return stored
        blobs.LocalBlobStore.put_file = held_put_file
    elif point == "rows-inserted":  # version and artifact rows inserted, not committed
        @event.listens_for(registry.db, "after_cursor_execute")
        def held_insert(conn, cursor, statement, parameters, context, executemany):
            if statement.lstrip().upper().startswith("INSERT INTO ARTIFACTS"):
                hold()

    registry.register_version(
        "digits", checkpoint=Path(checkpoint), config={"n": 2}, metrics={"test_accuracy": 0.9}
    )
    print("registered", flush=True)
    """
)


def _run_until(point: str, home: Path, checkpoint: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, point, str(home), str(checkpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline().strip() if ready else "(no answer in 120 s)"
    if line != point:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child did not reach {point!r}: {line!r}\n{err}")
    return proc


@pytest.mark.parametrize("point", ["copying", "blob-stored", "rows-inserted"])
def test_sigkill_mid_registration_leaves_no_version_and_gc_cleans_up(
    tmp_path: Path, point: str, kiln_home: Path
) -> None:
    # kiln_home: on PostgreSQL, the child finds the database in KILN_REGISTRY_URL
    home = tmp_path / "home"
    settings = Settings(home=home)
    first = tmp_path / "first.safetensors"
    first.write_bytes(os.urandom(100))
    with kiln.registry.open(settings=settings) as registry:
        registry.register_version("digits", checkpoint=first, config={}, metrics={})
        registry.promote("digits:1")
    doomed = tmp_path / "doomed.safetensors"
    doomed.write_bytes(os.urandom(5000))

    proc = _run_until(point, home, doomed)
    with kiln.registry.open(settings=settings) as registry:
        # Another process reads while the registration is held (WAL: readers never wait).
        assert [v.version for v in registry.list_versions("digits")] == [1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    with kiln.registry.open(settings=settings) as registry:
        assert [v.version for v in registry.list_versions("digits")] == [1]
        assert registry.resolve("digits").version == 1
        [summary] = registry.list_models()
        assert summary.version_count == 1 and summary.latest_version == 1
        report = registry.gc()
        if point == "copying":
            assert len(report.removed_temp_files) == 1 and report.removed_blobs == ()
        else:
            assert len(report.removed_blobs) == 1 and report.freed_bytes == 5000
        assert report.kept_blobs == 1
        leftovers = [p for p in (home / "artifacts").rglob("*") if p.is_file()]
        assert len(leftovers) == 1  # digits:1's checkpoint, nothing else
        # the lock died with the process: the next registration proceeds and takes number 2
        again = registry.register_version("digits", checkpoint=doomed, config={}, metrics={})
        assert again.version == 2
        assert registry.artifact_file(registry.checkpoint("digits", 2)).read_bytes() == (
            doomed.read_bytes()
        )


def test_gc_between_storing_a_blob_and_committing_does_not_lose_it(
    tmp_path: Path, kiln_home: Path
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(os.urandom(3000))
    kiln.registry.open(settings=settings).close()

    proc = _run_until("blob-stored", home, checkpoint)
    with kiln.registry.open(settings=settings) as registry:
        # Forced: it is the registry's only blob, which gc deletes only when confirmed.
        assert len(registry.gc(force=True).removed_blobs) == 1  # unreferenced yet: collected
    out, err = proc.communicate(input="go on\n", timeout=120)
    assert proc.returncode == 0, err
    # Under the lock it found its blob gone and stored it again (passing the hold point once
    # more: stdin is closed by then, so it does not wait), then committed.
    assert out.split() == ["blob-stored", "registered"]
    with kiln.registry.open(settings=settings) as registry:
        artifact = registry.checkpoint("digits", 1)
        assert registry.artifact_file(artifact).read_bytes() == checkpoint.read_bytes()
        assert registry.gc().removed_blobs == ()
