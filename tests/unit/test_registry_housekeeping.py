"""Keeping a registry sound, on a real SQLite file and blob store: gc and its refusals, schema
versions and forward migrations."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

import kiln.registry
from kiln.errors import GcRefused, RegistryCorrupted, RegistryIncompatible
from kiln.registry import Registry
from kiln.registry import schema as registry_schema
from kiln.registry.blobs import LocalBlobStore
from kiln.settings import Settings
from tests.unit.conftest import Checkpoint, register

pytestmark = pytest.mark.both_registries


def test_gc_removes_unreferenced_blobs_and_dead_writers_temp_files(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    keep = register(registry, make_checkpoint)
    drop = register(registry, make_checkpoint)
    dropped_blob = registry.artifact_file(registry.checkpoint("digits", drop.version))
    registry.delete_version("digits", drop.version)
    blobs = registry.blobs
    assert isinstance(blobs, LocalBlobStore)
    incoming = blobs.root / "sha256" / "incoming"
    host = blobs._host
    dead = incoming / f".tmp-{host}-999999999-deadbeef"
    live = incoming / f".tmp-{host}-{os.getpid()}-cafecafe"
    dead.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    report = registry.gc()
    assert report.removed_blobs == (dropped_blob.name,)
    assert report.removed_temp_files == (dead.name,)
    assert report.kept_blobs == 1 and report.freed_bytes == 64 + len(b"partial")
    assert not dropped_blob.exists() and not dead.exists() and live.exists()
    assert registry.artifact_file(registry.checkpoint("digits", keep.version)).is_file()
    assert registry.gc().removed_blobs == ()


def test_gc_refuses_more_than_half_and_dry_run_deletes_nothing(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    versions = [register(registry, make_checkpoint) for _ in range(3)]
    registry.promote(versions[0].ref, gates=[])
    for v in versions[1:]:
        registry.delete_version("digits", v.version)
    planned = registry.gc(dry_run=True)
    assert planned.dry_run and len(planned.removed_blobs) == 2 and planned.confirmation
    with pytest.raises(GcRefused, match="2 of the 3 stored artifact blobs"):
        registry.gc()
    assert len(list(registry._blobs.stored())) == 3
    assert len(registry.gc(force=True).removed_blobs) == 2
    assert registry.gc().removed_blobs == ()


@pytest.mark.sqlite_registry
def test_gc_refuses_a_database_that_fails_its_integrity_check(
    settings: Settings, make_checkpoint: Checkpoint
) -> None:
    with kiln.registry.open(settings=settings) as registry:
        for _ in range(40):  # enough rows for the artifacts table to span pages
            register(registry, make_checkpoint)
    db = settings.home / "registry.db"
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
        page = conn.exec_driver_sql("PRAGMA page_size").scalar()
        root = conn.exec_driver_sql(
            "SELECT rootpage FROM sqlite_master WHERE name = 'ix_artifacts_sha256'"
        ).scalar()
    assert isinstance(page, int) and isinstance(root, int)
    data = bytearray(db.read_bytes())
    start = (root - 1) * page
    data[start + 8 : start + page] = os.urandom(page - 8)  # an index page's cells, garbled
    db.write_bytes(bytes(data))
    blobs = {p for p in settings.home.rglob("sha256/??/*")}
    with (
        kiln.registry.open(settings=settings) as registry,
        pytest.raises(RegistryCorrupted, match=r"quick check|malformed"),
    ):
        registry.gc(force=True)
    assert {p for p in settings.home.rglob("sha256/??/*")} == blobs


def test_a_newer_schema_is_refused(settings: Settings) -> None:
    kiln.registry.open(settings=settings).close()
    engine = sa.create_engine(settings.resolved_registry_url)
    with engine.begin() as conn:
        conn.execute(registry_schema.schema_version.update().values(version=99))
    engine.dispose()
    with pytest.raises(RegistryIncompatible, match="schema version 99"):
        kiln.registry.open(settings=settings)


def test_forward_migrations_run_once_in_order(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, make_checkpoint: Checkpoint
) -> None:
    with kiln.registry.open(settings=settings) as registry:
        register(registry, make_checkpoint)
    ran: list[int] = []
    following = registry_schema.SCHEMA_VERSION + 1

    def add_column(conn: sa.Connection) -> None:
        ran.append(following)
        conn.exec_driver_sql("ALTER TABLE models ADD COLUMN owner TEXT")

    monkeypatch.setattr(registry_schema, "SCHEMA_VERSION", following)
    monkeypatch.setitem(registry_schema.MIGRATIONS, following, add_column)
    for _ in range(2):
        with kiln.registry.open(settings=settings) as registry:
            assert registry.resolve("digits:1").version == 1
    assert ran == [following]
    engine = sa.create_engine(settings.resolved_registry_url)
    with engine.connect() as conn:
        version = sa.select(registry_schema.schema_version.c.version)
        assert conn.execute(version).scalar() == following
        assert "owner" in {c["name"] for c in sa.inspect(conn).get_columns("models")}
    engine.dispose()
