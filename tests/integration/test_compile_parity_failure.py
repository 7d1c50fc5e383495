"""An engine that computes a different function is reported and never passed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from kiln.compile import CompileOptions, compile_module
from kiln_engines import Signature, TensorSpec

SIG = Signature((TensorSpec("x", "float32", (-1, 8)),), (TensorSpec("y", "float32", (-1, 3)),))


class ExportsDifferently(nn.Module):
    """Adds a bias only while being exported: the compiled function differs from eager."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if torch.compiler.is_exporting():
            y = y + torch.tensor([0.0, 0.0, 5.0])
        return y


def test_parity_failure_is_reported_with_the_reason(tmp_path: Path) -> None:
    torch.manual_seed(0)
    held_out = {"x": np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)}
    report = compile_module(
        ExportsDifferently(),
        SIG,
        held_out,
        tmp_path,
        CompileOptions(targets=("onnxruntime",), max_batch=8, measure_seconds=0),
    )
    assert [r.kind for r in report.results] == ["onnx", "onnxruntime"]
    for result in report.results:
        assert result.status == "failed"
        assert result.parity is not None
        assert not result.parity.passed
        assert result.reason is not None
        assert "parity failed" in result.reason
        assert "max abs diff" in result.reason
        assert result.performance is None  # failing engines are not measured
