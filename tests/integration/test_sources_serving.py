"""A two-input, two-output PyTorch module registered with `kiln register --module`, compiled,
served by `kiln serve` and called with stock `tritonclient.grpc` (issue #15)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc as triton

from kiln.settings import Settings
from tests.integration.grpc_harness import running_server
from tests.integration.two_tower import register_two_tower
from tests.unit import sources_models


def test_a_registered_two_input_model_serves_what_the_source_computes(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    register_two_tower(cli, tmp_path, settings)
    # The same weights: two_tower() is seeded, and register_two_tower saved these.
    model = sources_models.two_tower().eval()

    rng = np.random.default_rng(7)
    features = rng.standard_normal((3, 10)).astype(np.float32)
    ids = rng.integers(0, 20, (3, 4)).astype(np.int64)
    with torch.inference_mode():
        score, pooled = (
            t.numpy() for t in model(torch.from_numpy(features), torch.from_numpy(ids))
        )

    with running_server(settings.home, models=("tower",)) as server, server.client() as client:
        metadata = client.get_model_metadata("tower", as_json=True)
        assert metadata["inputs"] == [
            {"name": "features", "datatype": "FP32", "shape": ["-1", "10"]},
            {"name": "ids", "datatype": "INT64", "shape": ["-1", "4"]},
        ]
        assert metadata["outputs"] == [
            {"name": "score", "datatype": "FP32", "shape": ["-1", "1"]},
            {"name": "pooled", "datatype": "FP32", "shape": ["-1", "3"]},
        ]
        config = client.get_model_config("tower").config
        assert config.max_batch_size == 16
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
            ("features", triton.model_config_pb2.TYPE_FP32, [10]),
            ("ids", triton.model_config_pb2.TYPE_INT64, [4]),
        ]
        assert [(o.name, list(o.dims)) for o in config.output] == [("score", [1]), ("pooled", [3])]

        inputs = [
            triton.InferInput("features", list(features.shape), "FP32"),
            triton.InferInput("ids", list(ids.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(features)
        inputs[1].set_data_from_numpy(ids)
        result = client.infer("tower", inputs)
        np.testing.assert_allclose(result.as_numpy("score"), score, atol=1e-5)
        np.testing.assert_allclose(result.as_numpy("pooled"), pooled, atol=1e-5)
