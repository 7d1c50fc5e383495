"""Export bundles, on real SQLite files and blob stores: export, import (keeping or renumbering
the version), and refusing foreign, truncated and tampered files."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from kiln.errors import ArtifactCorrupted, BundleInvalid
from kiln.registry import Registry
from tests.unit.conftest import Checkpoint, register

pytestmark = pytest.mark.both_registries


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
