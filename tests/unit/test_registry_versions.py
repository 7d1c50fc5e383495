"""Registering and resolving versions and attaching artifacts, on a real SQLite file and blob
store: numbering, validation, suggestions, sha256 checks, many threads."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

import kiln.registry
from kiln.errors import (
    AliasNotFound,
    ArtifactCorrupted,
    ArtifactNotFound,
    InvalidArgument,
    InvalidReference,
    ModelNotFound,
    VersionNotFound,
)
from kiln.registry import ArtifactKind, Lineage, Registry
from kiln.settings import Settings
from tests.unit.conftest import Checkpoint, Clock, register

pytestmark = pytest.mark.both_registries


@pytest.mark.sqlite_registry
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
