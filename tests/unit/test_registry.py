"""The registry API on a real SQLite file and blob store: versions, aliases, bundles, gc."""

from __future__ import annotations

import itertools
import os
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import kiln.registry
from kiln.errors import (
    AliasNotFound,
    AliasUnchanged,
    ArtifactCorrupted,
    ArtifactNotFound,
    BundleInvalid,
    GateFailed,
    GcRefused,
    InvalidArgument,
    InvalidReference,
    ModelNotFound,
    NothingToRollBack,
    RegistryCorrupted,
    RegistryIncompatible,
    VersionInUse,
    VersionNotFound,
)
from kiln.registry import ArtifactKind, Lineage, Registry
from kiln.registry import schema as registry_schema
from kiln.settings import Settings
from tests.unit.conftest import Clock

Checkpoint = Callable[..., Path]


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Checkpoint:
    """Write a small file standing in for a safetensors checkpoint (distinct bytes per call)."""
    counter = itertools.count()

    def make(content: bytes | None = None, name: str = "model.safetensors") -> Path:
        folder = tmp_path / "checkpoints" / str(next(counter))
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(content if content is not None else os.urandom(64))
        return path

    return make


@pytest.fixture
def registry(settings: Settings, clock: Clock) -> Iterator[Registry]:
    home = settings.home.resolve()
    with Registry(settings.resolved_registry_url, home / "artifacts", clock=clock) as reg:
        yield reg


def register(
    registry: Registry, make_checkpoint: Checkpoint, accuracy: float = 0.9, name: str = "digits"
) -> kiln.registry.ModelVersion:
    return registry.register_version(
        name,
        checkpoint=make_checkpoint(),
        config={"arch": "cnn", "epochs": 3},
        metrics={"test_accuracy": accuracy, "test_loss": 0.3, "ece": 0.02},
        lineage=Lineage(dataset="mnist-5k", data_fingerprint="sha256:abc", run_id="r1"),
        description="a test version",
    )


# -- registration and resolution ---------------------------------------------------------------


def test_open_uses_kiln_home(settings: Settings, make_checkpoint: Checkpoint) -> None:
    with kiln.registry.open(settings=settings) as registry:
        v = register(registry, make_checkpoint)
        blob = registry.artifact_file(registry.checkpoint("digits", v.version))
    home = settings.home.resolve()
    assert (home / "registry.db").is_file()
    assert blob.parent.parent == home / "artifacts" / "sha256"
    assert blob.parent.name == blob.name[:2]
    with sa.create_engine(settings.resolved_registry_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_register_then_resolve(registry: Registry, make_checkpoint: Checkpoint) -> None:
    ckpt = make_checkpoint(b"weights")
    v1 = registry.register_version(
        "digits",
        checkpoint=ckpt,
        config={"arch": "cnn"},
        metrics={"test_accuracy": 0.95},
        lineage=Lineage(dataset="mnist-5k", run_id="run-1", git_commit="abc123"),
        description="first",
    )
    v2 = register(registry, make_checkpoint)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.ref == "digits:1"
    got = registry.resolve("digits:1")
    assert got == v1
    assert got.lineage.git_commit == "abc123"
    assert got.created_at.tzinfo is not None
    assert registry.get_version("digits", 2) == v2
    assert registry.version_of("digits:2") == 2
    assert hash(got) == hash(registry.resolve("digits:1"))  # immutable and hashable
    [checkpoint] = registry.artifacts("digits", 1)
    assert checkpoint.kind is ArtifactKind.CHECKPOINT
    assert checkpoint.filename == "model.safetensors"
    assert checkpoint.size == len(b"weights")
    assert registry.artifact_file(checkpoint).read_bytes() == b"weights"
    assert [v.version for v in registry.list_versions("digits")] == [1, 2]
    assert [v.version for v in registry.list_versions("digits", limit=1)] == [2]
    with pytest.raises(InvalidArgument, match="positive"):
        registry.list_versions("digits", limit=0)
    [summary] = registry.list_models()
    assert (summary.name, summary.version_count, summary.latest_version) == ("digits", 2, 2)
    assert registry.get_model("digits") == summary
    with pytest.raises(ModelNotFound, match="did you mean 'digits'"):
        registry.get_model("digit")


def test_config_and_metrics_decode_on_first_access(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    profile = {"histogram": [[i / 7 for i in range(64)] for _ in range(64)]}  # tens of KiB
    registry.register_version(
        "digits",
        checkpoint=make_checkpoint(),
        config={"reference": profile, "model": "cnn"},
        metrics={"test_accuracy": 0.97},
    )
    v = registry.resolve("digits:1")
    assert "config" not in vars(v)  # nothing decoded yet
    assert v.config["reference"] == profile and v.metrics == {"test_accuracy": 0.97}
    assert v.config is v.config  # decoded once
    v.config["model"] = "changed locally"
    assert registry.resolve("digits:1").config["model"] == "cnn"
    assert "histogram" not in repr(v)


def test_identical_checkpoints_share_one_blob(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    a = register(registry, lambda: make_checkpoint(b"same"))
    b = register(registry, lambda: make_checkpoint(b"same"))
    pa = registry.artifact_file(registry.checkpoint("digits", a.version))
    pb = registry.artifact_file(registry.checkpoint("digits", b.version))
    assert pa == pb


def test_registration_validates_its_input(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(InvalidReference):
        registry.register_version(
            "Bad Name", checkpoint=tmp_path / "x", config={}, metrics={}, lineage=Lineage()
        )
    with pytest.raises(InvalidArgument, match="no such file"):
        registry.register_version(
            "digits", checkpoint=tmp_path / "missing", config={}, metrics={}, lineage=Lineage()
        )
    (tmp_path / "ok").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="JSON"):
        registry.register_version(
            "digits", checkpoint=tmp_path / "ok", config={"f": object()}, metrics={}
        )
    with pytest.raises(ModelNotFound):  # no version was created by the failures above
        registry.resolve("digits:1")


def test_parent_version_must_exist(registry: Registry, make_checkpoint: Checkpoint) -> None:
    register(registry, make_checkpoint)
    with pytest.raises(VersionNotFound, match="no version 7; versions: 1"):
        registry.register_version(
            "digits",
            checkpoint=make_checkpoint(),
            config={},
            metrics={},
            lineage=Lineage(parent_version=7),
        )
    child = registry.register_version(
        "digits",
        checkpoint=make_checkpoint(),
        config={},
        metrics={},
        lineage=Lineage(parent_version=1),
    )
    assert child.version == 2  # the refused registration consumed no number


def test_unknown_names_get_suggestions(registry: Registry, make_checkpoint: Checkpoint) -> None:
    with pytest.raises(ModelNotFound, match="registry is empty"):
        registry.resolve("digits")
    register(registry, make_checkpoint)
    with pytest.raises(ModelNotFound, match="no model 'digit'; did you mean 'digits'"):
        registry.resolve("digit:1")
    with pytest.raises(ModelNotFound, match="models: digits"):
        registry.resolve("zzz")
    with pytest.raises(VersionNotFound) as err:
        registry.resolve("digits:9")
    assert str(err.value) == (
        "model 'digits' has no version 9; versions: 1 (kiln models show digits)"
    )
    with pytest.raises(AliasNotFound, match="has none yet"):
        registry.resolve("digits")
    registry.promote("digits:1", "production")
    with pytest.raises(AliasNotFound, match="did you mean 'production'"):
        registry.resolve("digits@prodution")
    assert registry.version_of("digits") == registry.version_of("digits@production") == 1
    for bad, error in (("digit", ModelNotFound), ("digits:9", VersionNotFound)):
        with pytest.raises(error):
            registry.version_of(bad)
    with pytest.raises(AliasNotFound, match="did you mean 'production'"):
        registry.version_of("digits@prodution")
    with pytest.raises(AliasNotFound, match="aliases: production"):
        registry.resolve("digits@canary")


def test_version_numbers_are_never_reused(registry: Registry, make_checkpoint: Checkpoint) -> None:
    register(registry, make_checkpoint)
    v2 = register(registry, make_checkpoint)
    registry.delete_version("digits", v2.version)
    assert register(registry, make_checkpoint).version == 3
    with pytest.raises(VersionNotFound, match="versions: 1, 3"):
        registry.resolve("digits:2")


# -- artifacts ---------------------------------------------------------------------------------


def test_add_artifact_keeps_existing_rows(
    registry: Registry, make_checkpoint: Checkpoint, clock: Clock
) -> None:
    v = register(registry, make_checkpoint)
    before = registry.artifacts("digits", v.version)
    clock.advance(5)
    onnx = make_checkpoint(b"onnx-bytes", name="model.onnx")
    added = registry.add_artifact(
        "digits",
        v.version,
        kind="onnx",
        path=onnx,
        target={"device": "cpu"},
        libraries={"onnx": "1.23.2"},
        report={"parity": {"max_abs_diff": 1e-6, "top1_agreement": 1.0}},
    )
    again = registry.add_artifact(
        "digits", v.version, kind=ArtifactKind.ONNX, path=onnx, target={"device": "cpu"}
    )
    assert again == added  # the same file, kind and target: no second row
    assert added.created_at == clock.now
    assert added.report["parity"]["top1_agreement"] == 1.0
    after = registry.artifacts("digits", v.version)
    assert after[: len(before)] == before
    assert [a.kind for a in after] == [ArtifactKind.CHECKPOINT, ArtifactKind.ONNX]
    assert registry.artifacts("digits", v.version, kind="onnx") == [added]
    assert registry.model_artifacts("digits") == {v.version: after}
    with pytest.raises(InvalidArgument, match="kinds: checkpoint, onnx, onnxruntime"):
        registry.add_artifact("digits", v.version, kind="pickle", path=onnx)
    with pytest.raises(VersionNotFound):
        registry.add_artifact("digits", 99, kind="onnx", path=onnx)


def test_tampered_blob_is_refused(registry: Registry, make_checkpoint: Checkpoint) -> None:
    v = register(registry, lambda: make_checkpoint(b"original weights"))
    artifact = registry.checkpoint("digits", v.version)
    blob = registry.artifact_file(artifact)
    blob.chmod(0o644)  # blobs are stored read-only
    blob.write_bytes(b"0riginal weights")
    with pytest.raises(ArtifactCorrupted) as err:
        registry.artifact_file(artifact)
    message = str(err.value)
    assert str(blob) in message
    assert artifact.sha256 in message
    assert kiln.registry.blobs.hash_file(blob) in message
    with pytest.raises(ArtifactCorrupted):  # nor can it be exported
        registry.export_version(v.ref, blob.parent / "out.tar")


def test_missing_blob_is_reported(registry: Registry, make_checkpoint: Checkpoint) -> None:
    v = register(registry, make_checkpoint)
    artifact = registry.checkpoint("digits", v.version)
    registry.artifact_file(artifact).unlink()
    with pytest.raises(ArtifactNotFound, match="missing"):
        registry.artifact_file(artifact)


# -- promotion, gates, rollback, history -------------------------------------------------------


def test_promote_and_resolve_alias(registry: Registry, make_checkpoint: Checkpoint) -> None:
    v1 = register(registry, make_checkpoint, accuracy=0.90)
    v2 = register(registry, make_checkpoint, accuracy=0.93)
    first = registry.promote(v1.ref, actor="ana", reason="first model")
    assert (first.from_version, first.to_version, first.action) == (None, 1, "promote")
    assert registry.resolve("digits") == v1
    assert registry.resolve("digits@production") == v1
    move = registry.promote("digits:2")
    assert (move.from_version, move.to_version) == (1, 2)
    assert move.gate is not None and move.gate.passed and not move.forced
    assert move.actor  # the OS user by default
    assert registry.resolve("digits") == v2
    registry.promote("digits@production", "candidate")  # an alias reference works too
    assert registry.aliases("digits") == {"candidate": 2, "production": 2}
    with pytest.raises(AliasUnchanged, match="already points at digits:2"):
        registry.promote("digits:2")
    with pytest.raises(InvalidReference, match="not a valid alias name"):
        registry.promote("digits:1", "Prod!")


def test_accuracy_gate_refuses_a_worse_candidate(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    register(registry, make_checkpoint, accuracy=0.95)
    register(registry, make_checkpoint, accuracy=0.90)
    register(registry, make_checkpoint, accuracy=0.947)  # within the default 0.005
    registry.promote("digits:1")
    with pytest.raises(GateFailed) as err:
        registry.promote("digits:2", reason="try")
    message = str(err.value)
    assert "0.9000" in message and "0.9500" in message and "-0.0500" in message
    assert "use --force to override" in message
    assert registry.resolve("digits").version == 1
    assert len(registry.history("digits")) == 1  # a refused promotion moves nothing
    assert registry.promote("digits:3").gate.passed  # type: ignore[union-attr]
    forced = registry.promote("digits:2", force=True, reason="hotfix")
    assert forced.forced
    assert forced.gate is not None and not forced.gate.passed and forced.gate.forced
    stored = registry.history("digits")[-1]
    assert stored == forced
    assert stored.gate is not None
    [result] = stored.gate.results
    assert result.numbers["candidate"] == 0.90
    assert result.numbers["current"] == 0.947


def test_custom_gates_plug_into_promote(registry: Registry, make_checkpoint: Checkpoint) -> None:
    register(registry, make_checkpoint)

    class Always:
        def __init__(self, answer: bool) -> None:
            self.answer = answer

        @property
        def name(self) -> str:
            return f"always-{self.answer}"

        def __call__(self, context: kiln.registry.GateContext) -> kiln.registry.GateResult:
            assert context.candidate.ref == "digits:1"
            return kiln.registry.GateResult(self.name, self.answer, {"x": 1.0}, "said so")

    with pytest.raises(GateFailed, match="always-False: said so"):
        registry.promote("digits:1", gates=[Always(True), Always(False)])
    move = registry.promote("digits:1", gates=[Always(True)])
    assert move.gate is not None
    assert [r.gate for r in move.gate.results] == ["always-True"]
    assert isinstance(Always(True), kiln.registry.Gate)


def test_rollback_undoes_promotions_in_order(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    for _ in range(4):
        register(registry, make_checkpoint)
    for v in (1, 2, 3):
        registry.promote(f"digits:{v}")
    assert registry.rollback("digits").to_version == 2
    registry.promote("digits:4")
    back = registry.rollback("digits", reason="bad latency")
    assert (back.from_version, back.to_version, back.action) == (4, 2, "rollback")
    assert back.reason == "bad latency" and back.gate is None
    assert registry.rollback("digits").to_version == 1
    with pytest.raises(NothingToRollBack, match="no earlier version"):
        registry.rollback("digits")
    with pytest.raises(AliasNotFound):
        registry.rollback("digits", "candidate")


def test_rollback_to_a_deleted_version_is_refused(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    register(registry, make_checkpoint)
    register(registry, make_checkpoint)
    registry.promote("digits:1")
    registry.promote("digits:2")
    registry.delete_version("digits", 1)
    with pytest.raises(NothingToRollBack, match="digits:1: that version was deleted"):
        registry.rollback("digits")


def test_history_is_complete_and_answers_what_served_when(
    registry: Registry, make_checkpoint: Checkpoint, clock: Clock
) -> None:
    for _ in range(3):
        register(registry, make_checkpoint)
    t0 = clock.now
    registry.promote("digits:1", actor="ana", reason="launch")
    t1 = clock.advance(10)
    registry.promote("digits:1", "candidate", actor="bo")
    t2 = clock.advance(10)
    registry.promote("digits:2", actor="ana", reason="retrained")
    t3 = clock.advance(10)
    registry.promote("digits:3", force=True, gates=[])
    t4 = clock.advance(10)
    registry.rollback("digits", actor="oncall", reason="errors")
    moves = registry.history("digits")
    assert [(m.alias, m.from_version, m.to_version, m.action) for m in moves] == [
        ("production", None, 1, "promote"),
        ("candidate", None, 1, "promote"),
        ("production", 1, 2, "promote"),
        ("production", 2, 3, "promote"),
        ("production", 3, 2, "rollback"),
    ]
    assert [m.at for m in moves] == [t0, t1, t2, t3, t4]
    assert [m.actor for m in moves][:3] == ["ana", "bo", "ana"]
    assert moves[0].reason == "launch"
    assert not moves[3].forced  # forced only means "a gate failed and was overridden"
    assert [m.alias for m in registry.history("digits", "candidate")] == ["candidate"]
    at = registry.alias_at
    assert at("digits", "production", t0 - timedelta(seconds=1)) is None
    assert at("digits", "production", t0) == 1
    assert at("digits", "production", t2 + timedelta(minutes=5)) == 2
    assert at("digits", "production", t3 + timedelta(minutes=5)) == 3
    assert at("digits", "production", t4 + timedelta(days=1)) == 2
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        at("digits", "production", datetime(2026, 11, 23, 14, 2))


def test_delete_is_refused_while_an_alias_points_at_it(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    register(registry, make_checkpoint)
    register(registry, make_checkpoint)
    registry.promote("digits:1")
    registry.promote("digits:1", "candidate")
    with pytest.raises(VersionInUse) as err:
        registry.delete_version("digits", 1)
    assert "alias 'candidate', 'production' points at it" in str(err.value)
    assert "kiln promote digits:OTHER --alias candidate" in str(err.value)
    assert registry.resolve("digits:1").version == 1
    deleted = registry.delete_version("digits", 2)
    assert deleted.version == 2
    assert registry.artifacts("digits", 1)  # the other version is untouched
    with pytest.raises(VersionNotFound):
        registry.delete_version("digits", 2)


# -- bundles -----------------------------------------------------------------------------------


def test_export_then_import_into_an_empty_registry(
    registry: Registry, make_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    register(registry, make_checkpoint)
    v = register(registry, make_checkpoint)
    registry.add_artifact(
        "digits", v.version, kind="onnx", path=make_checkpoint(name="m.onnx"), report={"ok": 1}
    )
    bundle = tmp_path / "digits-2.tar.gz"
    registry.export_version("digits:2", bundle)
    source_artifacts = registry.artifacts("digits", 2)

    other = Registry(f"sqlite:///{tmp_path / 'other' / 'r.db'}", tmp_path / "other" / "artifacts")
    result = other.import_bundle(bundle)
    assert result.created and result.source_ref == "digits:2"
    assert result.version == v  # same number, config, metrics, lineage and creation time
    imported = other.artifacts("digits", 2)
    assert [(a.kind, a.sha256, a.size, a.filename, a.report) for a in imported] == [
        (a.kind, a.sha256, a.size, a.filename, a.report) for a in source_artifacts
    ]
    for a in imported:
        assert other.artifact_file(a).read_bytes() == registry.artifact_file(a).read_bytes()
    again = other.import_bundle(bundle)
    assert not again.created and again.version == v
    assert len(other.artifacts("digits", 2)) == 2
    # the next local registration continues after the imported number
    assert register(other, make_checkpoint).version == 3
    other.close()


def test_import_takes_a_new_number_when_the_number_is_used(
    registry: Registry, make_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    register(registry, make_checkpoint)
    registry.export_version("digits:1", tmp_path / "b.tar")
    other = Registry(f"sqlite:///{tmp_path / 'o' / 'r.db'}", tmp_path / "o" / "artifacts")
    register(other, make_checkpoint)
    result = other.import_bundle(tmp_path / "b.tar")
    assert result.created and result.version.ref == "digits:2"
    assert result.source_ref == "digits:1"
    other.close()


def test_import_rejects_foreign_truncated_and_tampered_files(
    registry: Registry, make_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    register(registry, make_checkpoint)
    good = tmp_path / "good.tar"
    registry.export_version("digits:1", good)
    other = Registry(f"sqlite:///{tmp_path / 'o' / 'r.db'}", tmp_path / "o" / "artifacts")

    with pytest.raises(BundleInvalid, match="no bundle file"):
        other.import_bundle(tmp_path / "nope.tar")
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(os.urandom(3000))
    with pytest.raises(BundleInvalid, match="not a Kiln bundle"):
        other.import_bundle(foreign)
    other_tar = tmp_path / "other.tar"
    with tarfile.open(other_tar, "w") as tar:
        tar.add(foreign, arcname="data.bin")
    with pytest.raises(BundleInvalid, match=r"no manifest\.json"):
        other.import_bundle(other_tar)
    data = good.read_bytes()
    sha = registry.checkpoint("digits", 1).sha256
    with tarfile.open(good) as tar:
        manifest = tar.getmember("manifest.json")
        member = tar.getmember(f"blobs/{sha}")
    # cut inside the blob's bytes, inside its header, inside the manifest, inside its header
    for cut in (member.offset_data + 10, member.offset + 100, manifest.offset_data + 50, 100):
        truncated = tmp_path / f"cut-{cut}.tar"
        truncated.write_bytes(data[:cut])
        with pytest.raises(BundleInvalid, match=r"truncated|not a Kiln bundle"):
            other.import_bundle(truncated)
    # flip one byte inside the blob's data
    tampered = bytearray(data)
    tampered[member.offset_data] ^= 0xFF
    (tmp_path / "tampered.tar").write_bytes(bytes(tampered))
    with pytest.raises(ArtifactCorrupted, match=sha):
        other.import_bundle(tmp_path / "tampered.tar")
    assert other.list_models() == []  # nothing half-imported
    assert other.gc().removed_blobs == ()  # and nothing left behind
    other.close()


# -- gc and schema -----------------------------------------------------------------------------


def test_gc_removes_unreferenced_blobs_and_dead_writers_temp_files(
    registry: Registry, make_checkpoint: Checkpoint
) -> None:
    keep = register(registry, make_checkpoint)
    drop = register(registry, make_checkpoint)
    dropped_blob = registry.artifact_file(registry.checkpoint("digits", drop.version))
    registry.delete_version("digits", drop.version)
    incoming = registry.artifacts_dir / "sha256" / "incoming"
    host = registry._blobs._host
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


def test_one_registry_shared_by_threads(registry: Registry, make_checkpoint: Checkpoint) -> None:
    paths = [make_checkpoint() for _ in range(16)]

    def job(path: Path) -> int:
        version = registry.register_version("digits", checkpoint=path, config={}, metrics={})
        registry.promote(version.ref, gates=[])
        return registry.resolve(version.ref).version

    with ThreadPoolExecutor(max_workers=8) as pool:
        numbers = sorted(pool.map(job, paths))
    assert numbers == list(range(1, 17))
    moves = registry.history("digits")
    assert len(moves) == 16
    assert all(b.from_version == a.to_version for a, b in itertools.pairwise(moves))


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
