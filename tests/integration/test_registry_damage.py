"""A damaged registry database is refused, never re-created; absurd bundles are refused.

Through the real CLI on real SQLite files: an empty (zero-byte), overwritten, truncated or
foreign `registry.db` fails every command with a DataLoss error that says how to restore it,
and the file and the artifact blobs stay exactly as they were.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kiln.registry
from kiln.settings import Settings


@pytest.fixture
def seeded_db(seeded: Settings) -> Path:
    """The registry file of the `seeded` home, its WAL checkpointed."""
    db = seeded.home / "registry.db"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    return db


def _blobs(home: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (home / "artifacts").rglob("*") if p.is_file()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _zero(db: Path) -> None:
    db.write_bytes(b"")


def _random(db: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size))


def _truncated(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _no_tables(db: Path) -> None:
    # A valid SQLite file holding nothing: what `sqlite3.connect` + `PRAGMA journal_mode=WAL`
    # leaves behind, or an old Kiln killed while it created the schema.
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def _foreign(db: Path) -> None:
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()


def _version_row_gone(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM schema_version")
    conn.commit()
    conn.close()


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-bytes": (_zero, "is empty (0 bytes)"),
    "random-bytes": (_random, "is not an SQLite database"),
    "truncated": (_truncated, "is damaged"),
    "no-tables": (_no_tables, "holds no Kiln registry"),
    "foreign": (_foreign, "holds no Kiln registry"),
    "no-schema-row": (_version_row_gone, "is damaged"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_registry_is_refused_and_left_as_it_is(
    cli: Any, seeded_db: Path, kiln_home: Path, damage: str
) -> None:
    blobs = _blobs(kiln_home)
    harm, fragment = DAMAGE[damage]
    harm(seeded_db)
    before = _digest(seeded_db)
    for args in (("models", "list"), ("promote", "digits:2"), ("gc",), ("gc", "--yes")):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        message = " ".join(result.stderr.split())
        assert "internal error" not in message and "Traceback" not in message
        assert fragment in message, message
        assert "registry.db" in message
        assert "backup" in message and "kiln models import" in message
    as_json = cli("models", "list", "--json")
    assert as_json.exit_code == 2
    assert as_json.json()["error"]["code"] == "data_loss"
    # Nothing re-initialised, nothing collected.
    assert _digest(seeded_db) == before
    assert _blobs(kiln_home) == blobs


def test_the_message_names_the_path_as_given_not_resolved(
    seeded_db: Path, kiln_home: Path, tmp_path: Path
) -> None:
    _zero(seeded_db)
    exe = Path(sys.executable).with_name("kiln")
    env = {**os.environ, "KILN_HOME": "kiln-home"}
    proc = subprocess.run(
        [str(exe), "models", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert "kiln-home/registry.db" in message and str(tmp_path) not in message


def test_a_new_registry_is_created_only_where_there_is_no_file(cli: Any, kiln_home: Path) -> None:
    assert cli("models", "list", "--json").json() == {"models": []}
    db = kiln_home / "registry.db"
    assert db.stat().st_size > 0  # created whole, with its schema
    assert sorted(p.name for p in kiln_home.iterdir() if p.name.startswith(".")) == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall()
    assert cli("models", "list", "--json").json() == {"models": []}


def test_a_registry_deleted_without_its_wal_is_refused(
    cli: Any, seeded_db: Path, kiln_home: Path, tmp_path: Path
) -> None:
    # A writer's WAL holds committed transactions not yet copied into the database file:
    # starting a new registry beside it would replay them into the wrong file.
    with kiln.registry.open(settings=Settings(home=kiln_home)) as registry:
        ckpt = tmp_path / "more.safetensors"
        ckpt.write_bytes(os.urandom(64))
        registry.register_version("digits", checkpoint=ckpt, config={}, metrics={})
        wal = Path(f"{seeded_db}-wal")
        assert wal.stat().st_size > 0
        kept = tmp_path / "kept-wal"
        shutil.copyfile(wal, kept)
    seeded_db.unlink()
    shutil.copyfile(kept, wal)
    result = cli("models", "list")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert "registry.db-wal" in message and "kiln models import" in message
    assert not seeded_db.exists()


# -- absurd numbers and bundles -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("promote", "digits:99999999999999999999"),
        ("promote", "digits:9223372036854775808"),
        ("models", "show", "digits:" + "9" * 5000),
        ("models", "delete", "digits:18446744073709551616"),
        ("models", "export", "digits:99999999999999999999", "out.tar"),
        ("rollout", "digits:99999999999999999999", "--off"),
    ],
    ids=["20-digits", "2-63", "5000-digits", "2-64", "export", "rollout"],
)
def test_versions_past_int64_are_refused(cli: Any, seeded_db: Path, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "internal error" not in result.stderr
    message = " ".join(result.stderr.split())
    assert len(message) < 600
    assert "9223372036854775807" in message or "not a valid model name" in message


def _rewrite_manifest(bundle: Path, out: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of `bundle` whose manifest.json is `change(manifest)` (dict or raw bytes)."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            assert data is not None
            body = data.read()
            if member.name == "manifest.json":
                changed = change(json.loads(body))
                body = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
                member.size = len(body)
            dst.addfile(member, io.BytesIO(body))
    return out


def _version(value: int) -> Callable[[dict[str, Any]], Any]:
    def change(m: dict[str, Any]) -> Any:
        m["version"]["version"] = value
        return m

    return change


def _parent(m: dict[str, Any]) -> Any:
    m["version"]["lineage"]["parent_version"] = 2**63
    return m


def _size(m: dict[str, Any]) -> Any:
    m["artifacts"][0]["size"] = 2**64
    return m


def _deep(m: dict[str, Any]) -> Any:
    text = json.dumps(m)
    nested = "[" * 200_000 + "]" * 200_000
    return text.replace('"config": {', f'"config": {{"x": {nested}, ', 1).encode()


def _long_number(m: dict[str, Any]) -> Any:
    return json.dumps(m).replace('"config": {', '"config": {"x": ' + "7" * 5000 + ", ", 1).encode()


def _far_future(m: dict[str, Any]) -> Any:
    m["version"]["created_at"] = "9999-12-31T23:59:59-14:00"  # year 10000 in UTC
    return m


def _moderately_deep(m: dict[str, Any]) -> Any:
    value: Any = 1
    for _ in range(500):
        value = [value]
    m["version"]["config"]["x"] = value
    return m


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (_version(2**63), "version"),
        (_version(2**64), "version"),
        (_version(0), "version"),
        (_parent, "parent_version"),
        (_size, "size"),
        (_deep, "nested"),
        (_moderately_deep, "nested"),
        (_long_number, "4,300 digits"),
        (_far_future, "created_at"),
    ],
    ids=[
        "version-2-63",
        "version-2-64",
        "version-0",
        "parent",
        "size",
        "deep",
        "500-deep",
        "5000-digit-number",
        "year-10000",
    ],
)
def test_import_refuses_absurd_manifests_and_imports_nothing(
    cli: Any,
    seeded_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[dict[str, Any]], Any],
    fragment: str,
) -> None:
    bundle = tmp_path / "good.tar"
    assert cli("models", "export", "digits:1", str(bundle)).exit_code == 0
    bad = _rewrite_manifest(bundle, tmp_path / "bad.tar", change)
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "other-home"))
    result = cli("models", "import", str(bad))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert "internal error" not in message and "malformed manifest.json" in message
    assert fragment in message
    assert len(message) < 800
    assert cli("models", "list", "--json").json() == {"models": []}
    as_json = cli("models", "import", str(bad), "--json")
    assert as_json.json()["error"]["code"] == "invalid_argument"
