"""The aotinductor backend refuses damaged or foreign packages before loading compiled code.

A real compile-and-run round trip lives in the compile tests (it takes ~30 s of C++ compiling).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from kiln_engines import EngineLoadError, load
from kiln_engines.signature import SIGNATURE_METADATA_KEY, Signature, TensorSpec

SIG = Signature((TensorSpec("x", "float32", (-1, 4)),), (TensorSpec("y", "float32", (-1, 3)),))


def fake_package(path: Path, **metadata: str) -> Path:
    """A zip laid out like an AOTInductor package, holding metadata and no compiled code."""
    meta = {"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": "AVX2", **metadata}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data/aotinductor/model/abc.wrapper_metadata.json", json.dumps(meta))
        archive.writestr("m/archive_format", "pt2")
    return path


def code_of(path: Path) -> tuple[str, str]:
    with pytest.raises(EngineLoadError) as err:
        load(path, "aotinductor")
    return err.value.code, err.value.message


def test_truncated_package_is_data_loss(tmp_path: Path) -> None:
    path = fake_package(tmp_path / "m.pt2", **{SIGNATURE_METADATA_KEY: json.dumps(SIG.to_dict())})
    path.write_bytes(path.read_bytes()[:-40])
    code, message = code_of(path)
    assert code == "data_loss"
    assert "corrupt or truncated" in message


def test_not_a_zip_is_data_loss(tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    path.write_bytes(b"definitely not a zip archive" * 10)
    assert code_of(path)[0] == "data_loss"


def test_zip_without_a_model_is_data_loss(tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    code, message = code_of(path)
    assert code == "data_loss"
    assert "not an AOTInductor package" in message


def test_package_for_a_wider_cpu_is_refused_before_loading(tmp_path: Path) -> None:
    import torch

    if torch.backends.cpu.get_cpu_capability().upper() == "AVX512":
        pytest.skip("this CPU runs AVX512 packages")
    path = fake_package(
        tmp_path / "m.pt2",
        AOTI_CPU_ISA="AVX512",
        **{SIGNATURE_METADATA_KEY: json.dumps(SIG.to_dict())},
    )
    code, message = code_of(path)
    assert code == "failed_precondition"
    assert "compiled for AVX512 CPUs" in message


def test_package_without_kiln_signature(tmp_path: Path) -> None:
    code, message = code_of(fake_package(tmp_path / "m.pt2"))
    assert code == "failed_precondition"
    assert "no Kiln signature" in message


def test_cuda_package_on_cpu_request(tmp_path: Path) -> None:
    path = fake_package(
        tmp_path / "m.pt2",
        AOTI_DEVICE_KEY="cuda",
        **{SIGNATURE_METADATA_KEY: json.dumps(SIG.to_dict())},
    )
    code, message = code_of(path)
    assert code == "failed_precondition"
    assert "compiled for cuda" in message
