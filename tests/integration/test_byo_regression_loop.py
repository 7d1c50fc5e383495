"""A regressor trained with plain PyTorch outside Kiln, exported to ONNX, through the whole loop
(issue #15, acceptance (a)): `kiln register --onnx` with a data set, `kiln compile` verified
against the source, `kiln promote` through the RMSE gates, `kiln serve` called with stock
`tritonclient.grpc` (answers equal to the PyTorch module), traffic logged, numeric feedback
over gRPC kiln.v1 joined, and `kiln evaluate` reporting RMSE; `kiln retrain` then explains why
Kiln cannot retrain an ONNX source and what to do instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from torch import nn

import kiln.registry
from kiln.data import load_dataset
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2 as fb
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2_grpc as fb_grpc
from kiln.serving.traffic_hook import TrafficSink
from kiln.settings import Settings
from tests.integration.grpc_harness import running_server

pytestmark = pytest.mark.slow


def fit(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> nn.Module:
    """What a user's own training script does: a small MLP, Adam, MSE, in raw target units
    (the inputs standardised inside the module, so the ONNX file takes raw features)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    target_mean, target_std = float(y.mean()), float(y.std())

    class Regressor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("std", torch.from_numpy(std))
            self.net = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 1))

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.net((features - self.mean) / self.std)
            return out * target_std + target_mean

    model = Regressor()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).reshape(-1, 1)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(xt), yt)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model.eval()


def export(model: nn.Module, path: Path, width: int) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model, (torch.zeros(2, width),), str(path), input_names=["features"],
        output_names=["prediction"], dynamic_shapes=({0: batch},), dynamo=True,
    )  # fmt: skip
    return path


def test_an_onnx_regressor_goes_round_the_loop(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    data = load_dataset("diabetes", settings)
    width = data.train.x.shape[1]
    weak = fit(data.train.x, data.train.y, epochs=3, seed=0)
    strong = fit(data.train.x, data.train.y, epochs=40, seed=0)
    paths = [export(m, tmp_path / f"sugar-{i}.onnx", width) for i, m in enumerate((weak, strong))]

    for path in paths:
        done = cli("register", "sugar", "--onnx", str(path), "--task", "regression",
                   "--dataset", "diabetes", "--json")  # fmt: skip
        assert done.exit_code == 0, done.stderr
    for ref in ("sugar:1", "sugar:2"):
        compiled = cli("compile", ref, "--json")
        assert compiled.exit_code == 0, compiled.stderr
        report = json.loads(compiled.stdout)
        passed = {r["kind"] for r in report["results"] if r["status"] == "passed"}
        assert {"onnx", "onnxruntime"} <= passed
        parity = next(r for r in report["results"] if r["kind"] == "onnxruntime")["parity"]
        assert all(p["top1_agreement"] is None for p in parity["held_out"])  # a regressor
    first = cli("promote", "sugar:1", "--reason", "first")
    assert first.exit_code == 0, first.stderr
    gated = cli("promote", "sugar:2", "--reason", "better", "--eval-gates", "--json")
    assert gated.exit_code == 0, gated.stdout + gated.stderr
    assert "rmse" in gated.stdout.lower()

    x = data.test.x[:40]
    with torch.inference_mode():
        expected = strong(torch.from_numpy(x)).numpy()
    sink = TrafficSink(settings.home, feedback_source="grpc")
    ids = []
    with running_server(settings.home, models=("sugar",), sink=sink) as server:
        with server.client() as client:
            for i in range(len(x)):
                feed = triton.InferInput("features", [1, width], "FP32")
                feed.set_data_from_numpy(x[i : i + 1])
                answer = client.infer("sugar", [feed], request_id=f"req-{i}")
                np.testing.assert_allclose(
                    answer.as_numpy("prediction"), expected[i : i + 1], rtol=1e-5, atol=1e-3
                )
                ids.append(answer.get_response().id)
        with grpc.insecure_channel(server.url) as channel:
            items = [
                fb.FeedbackItem(request_id=rid, value=float(v), model_name="sugar")
                for rid, v in zip(ids, data.test.y[:40], strict=True)
            ]
            reply = fb_grpc.FeedbackStub(channel).SubmitFeedbackBatch(
                fb.SubmitFeedbackBatchRequest(items=items)
            )
            assert reply.accepted == len(ids) and not reply.rejected
    sink.close()

    evaluated = cli("evaluate", "sugar", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    regression = json.loads(evaluated.stdout)["regression"]
    served = next(v for v in regression["versions"] if v["version"] == 2)
    assert served["labelled"] == len(ids)
    residuals = expected[:, 0].astype(np.float64) - data.test.y[:40]
    assert served["rmse"] == pytest.approx(float(np.sqrt(np.mean(residuals**2))), rel=1e-3)

    with kiln.registry.open(settings=settings) as registry:
        assert registry.resolve("sugar@production").version == 2
    refused = cli("retrain", "sugar", "--min-labels", "1")
    assert refused.exit_code == 2
    assert "registered from an ONNX file" in refused.stderr
    assert "kiln register sugar --onnx" in refused.stderr
