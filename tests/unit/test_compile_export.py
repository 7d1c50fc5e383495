"""torch ► ONNX: one checked file, a dynamic batch axis, the signature inside; clear failures."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from kiln.compile.export import example_inputs, export_onnx, export_program, failing_operator
from kiln.errors import EngineBuildFailed
from kiln_engines import Signature, TensorSpec, load
from kiln_engines.signature import SIGNATURE_METADATA_KEY

SIG = Signature((TensorSpec("x", "float32", (-1, 4)),), (TensorSpec("y", "float32", (-1, 2)),), 16)
X = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class Eigen(nn.Module):
    """linalg.eigvals has no ONNX translation: export must name it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x.reshape(x.shape[0], 2, 2)).real


class FixedBatch(nn.Module):
    """Reshapes to a constant batch of 5: the batch axis cannot stay dynamic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(5, 4)[:, :2]


def export(module: nn.Module, dest: Path) -> onnx.ModelProto:
    program = export_program(module, SIG, example_inputs(SIG, {"x": X}), max_batch=16)
    return export_onnx(program, SIG, dest)


def test_single_checked_file_with_dynamic_batch_and_signature(tmp_path: Path) -> None:
    model = export(Small().eval(), tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no external data file
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param  # symbolic, not a fixed size
    props = {p.key: p.value for p in model.metadata_props}
    assert Signature.from_dict(json.loads(props[SIGNATURE_METADATA_KEY])) == SIG
    with load(tmp_path / "m.onnx", "onnx") as engine:
        assert engine.signature == SIG


def test_export_matches_the_module(tmp_path: Path) -> None:
    module = Small().eval()
    export(module, tmp_path / "m.onnx")
    with load(tmp_path / "m.onnx", "onnx") as engine, torch.no_grad():
        for rows in (1, 3, 5):
            got = engine.infer({"x": X[:rows]})["y"]
            np.testing.assert_allclose(got, module(torch.from_numpy(X[:rows])).numpy(), atol=1e-6)


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildFailed) as err:
        export(Eigen(), tmp_path / "m.onnx")
    assert "ONNX export failed on operator 'aten.linalg_eig'" in err.value.message
    assert "--target aotinductor" in err.value.message


def test_batch_dependent_model_fails_capture_clearly(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildFailed, match=r"torch\.export could not capture the model"):
        export(FixedBatch(), tmp_path / "m.onnx")


def test_failing_operator_reads_the_exception_chain() -> None:
    inner = RuntimeError(
        "No ONNX function found for <OpOverload(op='aten.foo', overload='default')>"
    )
    outer = RuntimeError("Failed to convert the exported program")
    outer.__cause__ = inner
    assert failing_operator(outer) == "aten.foo"
    assert failing_operator(
        RuntimeError("Exporting the operator 'aten::bar' is not supported")
    ) == ("aten::bar")
    assert failing_operator(RuntimeError("something else")) is None


def test_only_the_exporters_torchvision_notices_are_silenced() -> None:
    name = "torch.onnx._internal.exporter._registration"
    registration = logging.getLogger(name)
    # The filter sits on the logger torch really uses (a rename in torch fails here).
    assert importlib.import_module(name).logger is registration

    def passes(msg: str, *args: object) -> bool:
        record = registration.makeRecord(name, logging.WARNING, __file__, 0, msg, args, None)
        return bool(registration.filter(record))

    assert not passes("torchvision is not installed. Skipping %s", "torchvision::nms")
    assert passes("some other exporter warning about %s", "aten::foo")
