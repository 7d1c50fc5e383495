"""A small regression model made outside Kiln's trainer, as an ONNX file: features (N, 10)
float32 -> prediction (N, 1) = x @ w + b. For the tests of the regression loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REGRESSION_CONFIG = {"task": "regression", "class_names": []}
"""What a regressor registered without a data set carries (`kiln register --task regression`)."""


def write_regressor(path: Path, weights: np.ndarray, bias: float) -> Path:
    """features (N, len(weights)) float32 -> prediction (N, 1): x @ w + b."""
    width = len(weights)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "B"], ["prediction"])],
        "regressor",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.asarray(weights, np.float32).reshape(width, 1), "W"),
         numpy_helper.from_array(np.array([bias], np.float32), "B")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
