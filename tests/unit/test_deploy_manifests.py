"""deploy/validate.py as `just lint` runs it: the shipped manifests pass (every overlay rendered
by kubectl kustomize and validated strictly; the KServe objects against KServe's CRDs), and
broken copies of them fail, naming what is wrong."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VALIDATE = REPO / "deploy" / "validate.py"
SCHEMAS = REPO.parent / "shared" / "schemas" / "kserve"

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (it renders the overlays)"
)
needs_schemas = pytest.mark.skipif(
    not SCHEMAS.is_dir(), reason=f"KServe's CRD schemas are not at {SCHEMAS}"
)


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VALIDATE), *args], capture_output=True, text=True, check=False
    )


def test_the_shipped_manifests_pass() -> None:
    result = validate()
    assert result.returncode == 0, result.stdout + result.stderr
    for overlay in ("overlays/single", "overlays/shared"):
        assert f"deploy/kubernetes/{overlay}" in result.stdout
    for kind in ("Deployment/kiln-serve", "Service/kiln-serve", "PodDisruptionBudget/kiln-serve"):
        assert f"{kind} " in result.stdout
    assert "HorizontalPodAutoscaler/kiln-serve" in result.stdout
    assert "PersistentVolumeClaim/kiln-home" in result.stdout
    assert "FAIL" not in result.stdout
    if SCHEMAS.is_dir():
        for obj in ("ClusterServingRuntime/kiln", "InferenceService/digits-custom"):
            assert f"{obj} " in result.stdout


def test_without_the_kserve_schemas_kserve_is_skipped_saying_so(tmp_path: Path) -> None:
    result = validate("--kserve-schemas", str(tmp_path / "absent"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipping the KServe manifests (3 files): no CRD schemas at" in result.stdout
    assert "InferenceService" not in result.stdout


def broken_copy(tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """deploy/kubernetes and deploy/kserve copied to tmp_path, each `edits` file changed."""
    deploy = tmp_path / "deploy"
    for part in ("kubernetes", "kserve"):
        shutil.copytree(REPO / "deploy" / part, deploy / part)
    for name, (old, new) in edits.items():
        file = deploy / name
        text = file.read_text()
        assert old in text, f"{name} no longer holds {old!r}: update this test"
        file.write_text(text.replace(old, new, 1))
    return deploy


def test_broken_kubernetes_manifests_fail_naming_the_problem(tmp_path: Path) -> None:
    deploy = broken_copy(
        tmp_path,
        {
            "kubernetes/base/deployment.yaml": (
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesytem: true",
            ),
            "kubernetes/base/pdb.yaml": ("minAvailable: 1", "minAvailable: 1\n  maxUnavailabel: 1"),
            "kubernetes/overlays/single/kustomization.yaml": (
                "claimName: kiln-home",
                "claimName: {",
            ),
        },
    )
    result = validate("--deploy", str(deploy), "--kserve-schemas", str(tmp_path / "absent"))
    assert result.returncode == 1, result.stdout
    out = result.stdout
    assert "'readOnlyRootFilesytem' was unexpected" in out
    assert "writable root filesystem" in out  # and the promise it breaks
    assert "'maxUnavailabel' was unexpected" in out
    assert "kubernetes/overlays/single" in out and "kubectl kustomize" in out


def test_the_drain_outlasting_the_grace_period_fails(tmp_path: Path) -> None:
    deploy = broken_copy(
        tmp_path,
        {"kubernetes/base/kustomization.yaml": ("DRAIN_TIMEOUT_S=30", "DRAIN_TIMEOUT_S=120")},
    )
    result = validate("--deploy", str(deploy), "--kserve-schemas", str(tmp_path / "absent"))
    assert result.returncode == 1, result.stdout
    assert "terminationGracePeriodSeconds is not longer than the drain (120 s)" in result.stdout


@needs_schemas
def test_broken_kserve_manifests_fail_against_the_strict_crd_schemas(tmp_path: Path) -> None:
    deploy = broken_copy(
        tmp_path,
        {
            "kserve/clusterservingruntime.yaml": ("\n  containers:", "\n  containrs:"),
            "kserve/inferenceservice.yaml": (
                "deploymentMode: Standard",
                "deploymentMode: Serverless",
            ),
            "kserve/inferenceservice-custom.yaml": ("\n  annotations:", "\n  anotations:"),
        },
    )
    result = validate("--deploy", str(deploy))
    assert result.returncode == 1, result.stdout
    out = result.stdout
    assert "'containrs' was unexpected" in out  # the CRD leaves spec open; the strict copy not
    assert "deploymentMode is 'Serverless', not 'Standard'" in out
    assert "metadata: Additional properties are not allowed ('anotations' was unexpected)" in out
