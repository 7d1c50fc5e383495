"""Artifact blobs in a real S3 bucket (SeaweedFS started by the test run): KILN_STORAGE_URL.

Each test gets its own prefix in the session's bucket (`s3_home`) and its own registry
database, on SQLite and on PostgreSQL (`both_registries`), which is the set-up of replicas
sharing one registry and one bucket.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import kiln.registry
from kiln.errors import ArtifactCorrupted, ArtifactNotFound, StorageAccessDenied, StorageUnavailable
from kiln.registry import Lineage, Registry
from kiln.registry.s3_blobs import S3BlobStore
from kiln.settings import Settings
from kiln.storage import s3 as s3_module
from tests.seaweed import SeaweedServer

pytestmark = pytest.mark.both_registries


def _register(registry: Registry, tmp_path: Path, content: bytes | None = None) -> str:
    checkpoint = tmp_path / f"ckpt-{time.monotonic_ns()}" / "model.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(content if content is not None else os.urandom(256))
    version = registry.register_version(
        "digits",
        checkpoint=checkpoint,
        config={"arch": "mlp"},
        metrics={"test_accuracy": 0.9},
        lineage=Lineage(dataset="t", data_fingerprint="sha256:x", run_id="r"),
    )
    return registry.checkpoint("digits", version.version).sha256


def _another_host(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """From now on, run as another host: the same registry database and bucket, an empty
    home (so an empty artifact cache)."""
    monkeypatch.setenv("KILN_REGISTRY_URL", Settings().resolved_registry_url)
    monkeypatch.setenv("KILN_HOME", str(home))


def _store(registry: Registry) -> S3BlobStore:
    blobs = registry.blobs
    assert isinstance(blobs, S3BlobStore)
    return blobs


def test_blobs_go_to_the_bucket_content_addressed_and_come_back_verified(
    s3_home: Path, seaweed_server: SeaweedServer, tmp_path: Path
) -> None:
    with kiln.registry.open() as registry:
        sha = _register(registry, tmp_path, b"weights" * 100)
        store = _store(registry)
        assert registry.artifacts_location == os.environ["KILN_STORAGE_URL"] + "/artifacts"
        key = store.key(sha)
        assert key.endswith(f"/artifacts/sha256/{sha[:2]}/{sha}")
        head = seaweed_server.client().head_object(Bucket="kiln", Key=key)
        assert head["ContentLength"] == 700
        path = registry.artifact_file(registry.checkpoint("digits", 1))
        assert path.read_bytes() == b"weights" * 100
        assert path.is_relative_to(s3_home.resolve() / "cache" / "artifacts")
        assert not (s3_home / "artifacts").exists()  # nothing of the blobs outside the cache
        assert [b.sha256 for b in store.stored()] == [sha]


def test_another_host_downloads_and_a_restart_reads_its_verified_cache(
    s3_home: Path, seaweed_server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kiln.registry.open() as registry:
        sha = _register(registry, tmp_path, b"abc" * 1000)
    _another_host(monkeypatch, tmp_path / "replica")
    with kiln.registry.open() as replica:
        artifact = replica.checkpoint("digits", 1)
        assert replica.artifact_file(artifact).read_bytes() == b"abc" * 1000
    # The bucket loses the object: a restart of that host still serves its verified copy...
    seaweed_server.client().delete_object(Bucket="kiln", Key=_store(replica).key(sha))
    with kiln.registry.open() as restarted:
        assert restarted.artifact_file(artifact).read_bytes() == b"abc" * 1000
        # ...and a damaged cached copy is fetched again, which now fails clearly.
        cached = restarted.artifact_file(artifact)
        cached.chmod(0o644)
        cached.write_bytes(b"rot")
        with pytest.raises(ArtifactNotFound, match=r"s3://kiln/.*missing from the bucket"):
            restarted.artifact_file(artifact)


def test_a_blob_tampered_in_the_bucket_is_refused(
    s3_home: Path, seaweed_server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kiln.registry.open() as registry:
        sha = _register(registry, tmp_path)
        key = _store(registry).key(sha)
    seaweed_server.client().put_object(Bucket="kiln", Key=key, Body=b"tampered")
    _another_host(monkeypatch, tmp_path / "fresh-host")
    with kiln.registry.open() as replica:
        artifact = replica.checkpoint("digits", 1)
        with pytest.raises(ArtifactCorrupted, match=rf"s3://kiln/{key}.*expected sha256 {sha}"):
            replica.artifact_file(artifact)
        assert list(_store(replica).cache.stored()) == []  # nothing damaged reaches the cache


def test_registering_the_same_bytes_again_repairs_a_replaced_object(
    s3_home: Path, seaweed_server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = os.urandom(512)
    with kiln.registry.open() as registry:
        sha = _register(registry, tmp_path, content)
        key = _store(registry).key(sha)
        seaweed_server.client().put_object(Bucket="kiln", Key=key, Body=b"tampered")
        assert _register(registry, tmp_path, content) == sha  # version 2, same blob
    _another_host(monkeypatch, tmp_path / "fresh-host")
    with kiln.registry.open() as replica:
        assert replica.artifact_file(replica.checkpoint("digits", 1)).read_bytes() == content


def test_gc_deletes_unreferenced_objects_in_the_bucket(
    s3_home: Path, seaweed_server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kiln.registry.open() as registry:
        keep = _register(registry, tmp_path)
        drop = _register(registry, tmp_path)
        registry.delete_version("digits", 2)
        store = _store(registry)
        # An upload a killed writer never completed, old enough to be abandoned.
        client = seaweed_server.client()
        client.create_multipart_upload(Bucket="kiln", Key=store.key("0" * 64))
        monkeypatch.setattr("kiln.registry.s3_blobs._STALE_UPLOAD_S", -1.0)
        planned = registry.gc(dry_run=True)
        assert planned.removed_blobs == (drop,) and len(planned.removed_temp_files) == 1
        assert {b.sha256 for b in store.stored()} == {keep, drop}
        report = registry.gc()
        assert report.removed_blobs == (drop,) and report.kept_blobs == 1
        assert {b.sha256 for b in store.stored()} == {keep}
        assert store.storage.pending_uploads(store.storage.location.key("artifacts")) == []
        assert registry.artifact_file(registry.checkpoint("digits", 1)).is_file()


def test_large_blobs_go_up_in_parts_written_once(
    s3_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 1 << 20)
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 << 20)  # S3's smallest part but the last
    content = os.urandom((11 << 20) + 7)
    with kiln.registry.open() as registry:
        sha = _register(registry, tmp_path, content)
        assert _register(registry, tmp_path, content) == sha  # exists: not uploaded again
        store = _store(registry)
        assert [(b.sha256, b.size) for b in store.stored()] == [(sha, len(content))]
        assert store.storage.pending_uploads(store.storage.location.key("artifacts")) == []
    _another_host(monkeypatch, tmp_path / "fresh-host")
    with kiln.registry.open() as replica:
        assert replica.artifact_file(replica.checkpoint("digits", 1)).read_bytes() == content


def test_bundles_move_versions_between_local_files_and_the_bucket(
    s3_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switch_home: object
) -> None:
    content = os.urandom(300)
    with kiln.registry.open() as registry:
        _register(registry, tmp_path, content)
        registry.export_version("digits:1", tmp_path / "v1.kiln")
    # Into a registry whose blobs are local files...
    switch_home(tmp_path / "local-home")  # type: ignore[operator]
    storage_env = {k: os.environ.pop(k) for k in list(os.environ) if k == "KILN_STORAGE_URL"}
    with kiln.registry.open() as local:
        assert local.import_bundle(tmp_path / "v1.kiln").version.version == 1
        assert local.artifact_file(local.checkpoint("digits", 1)).read_bytes() == content
        local.export_version("digits:1", tmp_path / "back.kiln")
    # ...and back into another prefix of the bucket.
    monkeypatch.setenv("KILN_STORAGE_URL", storage_env["KILN_STORAGE_URL"] + "-copy")
    switch_home(tmp_path / "s3-home-2")  # type: ignore[operator]
    with kiln.registry.open() as other:
        other.import_bundle(tmp_path / "back.kiln")
        assert other.artifact_file(other.checkpoint("digits", 1)).read_bytes() == content
        assert other.artifacts_location.endswith("-copy/artifacts")


@pytest.mark.sqlite_registry
def test_wrong_credentials_are_refused_clearly_and_never_printed(
    s3_home: Path, cli: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KILN_S3_SECRET_ACCESS_KEY", "not-the-secret-8f3a")
    with kiln.registry.open() as registry, pytest.raises(StorageAccessDenied) as caught:
        _register(registry, tmp_path)
    assert "SignatureDoesNotMatch" in str(caught.value)
    assert "not-the-secret-8f3a" not in str(caught.value)
    result = cli("gc", "--dry-run")  # type: ignore[operator]
    assert result.exit_code != 0 and "KILN_S3_SECRET_ACCESS_KEY" in result.stderr
    assert "not-the-secret-8f3a" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.sqlite_registry
def test_an_unreachable_endpoint_is_a_clear_error_not_a_hang(
    s3_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KILN_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    with kiln.registry.open() as registry, pytest.raises(StorageUnavailable) as caught:
        _register(registry, tmp_path)
    assert "http://127.0.0.1:1 did not answer" in str(caught.value)
    assert "KILN_S3_ENDPOINT_URL" in str(caught.value)


@pytest.mark.sqlite_registry
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///tmp/x", "is not an S3 URL"),
        ("s3://Bad_Bucket/x", "is not a valid bucket name"),
        ("s3://kiln/a//b", "empty, '.' or '..' segment"),
    ],
)
def test_bad_storage_urls_are_refused(url: str, message: str, kiln_home: Path) -> None:
    from kiln.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=message):
        kiln.registry.open(settings=Settings(storage_url=url))
