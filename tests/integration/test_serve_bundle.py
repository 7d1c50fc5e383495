"""`kiln serve --bundle PATH` as KServe runs it: versions exported with `kiln models export`
(a file, an unpacked bundle as KServe's storage initializer leaves a downloaded `.tar.gz`, a
directory of both) served from a fresh, empty KILN_HOME, called with stock tritonclient; and
the bad inputs that exit 2 before anything listens."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

import kiln.registry
from kiln.serving.launcher import kiln_serve
from kiln.settings import Settings
from tests.conftest import CliResult
from tests.integration.grpc_harness import (
    ONE_THREAD,
    OUTPUT,
    images,
    reference_outputs,
    register,
)
from tests.integration.test_grpc_server import infer_input


@dataclass
class Exported:
    """Bundle files by the reference they were exported from, and what each version
    computes for the images `x`."""

    x: np.ndarray
    files: dict[str, Path]
    expected: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Two versions of `digits` and one of `other` exported from a source registry."""
    root = tmp_path_factory.mktemp("bundles")
    x = images(3, seed=5)
    files: dict[str, Path] = {}
    expected: dict[str, np.ndarray] = {}
    with kiln.registry.open(settings=Settings(home=root / "source-home")) as registry:
        for name, seed in (("digits", 1), ("digits", 2), ("other", 3)):
            version = register(registry, root / "work", name, seed)
            file = root / f"{version.name}-{version.version}.tar.gz"
            registry.export_version(version.ref, file)
            files[version.ref] = file
            expected[version.ref] = reference_outputs(registry, name, version.version, x)
    return Exported(x, files, expected)


def unpack(bundle: Path, into: Path) -> Path:
    """What KServe's storage initializer does with a single downloaded .tar.gz."""
    into.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="data")
    return into


def infer(url: str, model: str, x: np.ndarray, version: str = "") -> np.ndarray:
    with triton.InferenceServerClient(url) as client:
        assert client.is_model_ready(model, version)
        result = client.infer(model, [infer_input(x)], model_version=version)
        out = result.as_numpy(OUTPUT)
        assert out is not None
        return out


def test_an_unpacked_bundle_is_served_under_kserves_model_name(
    exported: Exported, tmp_path: Path
) -> None:
    files, expected, x = exported.files, exported.expected, exported.x
    models = unpack(files["digits:2"], tmp_path / "mnt" / "models")
    home = tmp_path / "fresh-home"
    with kiln_serve(
        "--bundle", str(models), "--model-name", "digits-isvc", home=home, env=ONE_THREAD
    ) as served:
        assert "digits-isvc:2" in served.line
        np.testing.assert_allclose(
            infer(served.url, "digits-isvc", x), expected["digits:2"], atol=1e-5
        )
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        assert [v.ref for v in registry.list_versions("digits-isvc")] == ["digits-isvc:2"]


def test_a_directory_of_bundles_serves_each_models_newest_by_default(
    exported: Exported, tmp_path: Path
) -> None:
    files, expected, x = exported.files, exported.expected, exported.x
    models = tmp_path / "models"
    models.mkdir()
    (models / "digits-1.tar.gz").write_bytes(files["digits:1"].read_bytes())
    unpack(files["digits:2"], models / "digits-2")
    (models / "other.bundle").write_bytes(files["other:1"].read_bytes())  # any name
    (models / ".hidden").write_text("a volume's bookkeeping, passed over")
    (models / "lost+found").mkdir()
    with kiln_serve(
        "--bundle", str(models), home=tmp_path / "home", env=ONE_THREAD, workers=2
    ) as served:
        assert all(ref in served.line for ref in ("digits:2", "digits:1", "other:1"))
        np.testing.assert_allclose(infer(served.url, "digits", x), expected["digits:2"], atol=1e-5)
        np.testing.assert_allclose(
            infer(served.url, "digits", x, version="1"), expected["digits:1"], atol=1e-5
        )
        np.testing.assert_allclose(infer(served.url, "other", x), expected["other:1"], atol=1e-5)


def fails(result: CliResult, *fragments: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_bad_bundle_paths_exit_2_saying_what_to_pass(
    cli: Callable[..., CliResult], exported: Exported, tmp_path: Path
) -> None:
    files = exported.files
    fails(cli("serve", "--bundle", str(tmp_path / "nowhere")), "no such file or directory")
    not_a_bundle = tmp_path / "model.onnx"
    not_a_bundle.write_bytes(b"\x08\x07onnx, not a tar archive")
    fails(cli("serve", "--bundle", str(not_a_bundle)), "is not a Kiln bundle", "kiln models export")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(cli("serve", "--bundle", str(empty)), "holds no bundle", "kiln models export")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for ref in ("digits:1", "other:1"):
        (mixed / files[ref].name).write_bytes(files[ref].read_bytes())
    fails(
        cli("serve", "--bundle", str(mixed), "--model-name", "one"),
        "names one model",
        "digits",
        "other",
    )
    fails(cli("serve", "--model-name", "one"), "pass --bundle PATH too")
    fails(cli("serve", "--bundle", str(mixed), "digits:1"), "either references or --bundle")
