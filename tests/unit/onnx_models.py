"""Small ONNX models built with onnx.helper, for engine tests that need no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kiln_engines.signature import SIGNATURE_METADATA_KEY, Signature

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def linear_model(path: Path, *, signature: Signature | None = None) -> Path:
    """y = relu(x @ W + b), batch axis dynamic."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if signature is not None:
        helper.set_model_props(model, {SIGNATURE_METADATA_KEY: json.dumps(signature.to_dict())})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0)
