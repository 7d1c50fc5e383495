"""ONNX sources: read and check the file, take its signature from the graph, run it as the
reference that compiled engines are judged against.

The reference is `onnx.reference.ReferenceEvaluator`, the ONNX specification's own Python
implementation: it shares no code with onnxruntime, so an engine that onnxruntime built is
checked against something that could disagree with it. Where the evaluator cannot run an
operator (custom domains, a few contrib ops), onnxruntime with every graph optimisation
disabled is the reference instead, and `OnnxReference.name` says which one ran.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kiln.errors import SourceInvalid
from kiln.sources.formats import FileFormat, refuse_pickle
from kiln_engines import DYNAMIC, Signature, TensorSpec

EVALUATOR = "onnx.reference.ReferenceEvaluator"
ORT_UNOPTIMISED = "onnxruntime (graph optimisations disabled)"


def _not_onnx(path: Path, found: FileFormat, detail: str) -> SourceInvalid:
    what = "" if found is FileFormat.OTHER else f" (it is a {found.value})"
    hint = "; register an exported program with --exported" if found is FileFormat.EXPORTED else ""
    return SourceInvalid(
        f"--onnx {path} is not an ONNX model{what}: {detail}. Export one with "
        f"torch.onnx.export(model, args, 'model.onnx', dynamo=True){hint}"
    )


def read_onnx(path: Path) -> onnx.ModelProto:
    """Load and fully check the ONNX model at `path` (external data included, if any).

    Raises `PickleRefused` for pickle files, `SourceInvalid` for files that are not ONNX or
    fail `onnx.checker.check_model(full_check=True)` (quoting the checker).
    """
    found = refuse_pickle(path, "--onnx")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, or missing external data files
        raise _not_onnx(
            path, found, str(exc).splitlines()[0] if str(exc) else "cannot parse it"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise _not_onnx(path, found, "it parses as an empty protobuf message, with no graph")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        checker = " ".join(str(exc).split())
        raise SourceInvalid(
            f"--onnx {path} fails the ONNX checker (onnx.checker.check_model, full check): "
            f"{checker[:600]}. Fix the export (the opset, custom operators) and register again"
        ) from exc
    return model


def single_file(model: onnx.ModelProto, workdir: Path) -> Path:
    """The model as one self-contained file under `workdir` (external data folded in)."""
    dest = workdir / "model.onnx"
    onnx.save(model, str(dest), save_as_external_data=False)
    return dest


def uses_external_data(path: Path) -> bool:
    """Whether the file at `path` keeps tensors in files beside it (read without them)."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise SourceInvalid(
            f"ONNX graph value '{value.name}' is not a tensor (sequences and maps are not "
            "supported as model inputs or outputs)"
        )
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    except (KeyError, TypeError) as exc:
        raise SourceInvalid(
            f"ONNX tensor '{value.name}' has element type "
            f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}, which Kiln engines do not "
            "support; use a numeric type"
        ) from exc
    if dtype == "object":
        raise SourceInvalid(f"ONNX tensor '{value.name}' holds strings; Kiln engines take numbers")
    # A dimension with a value is fixed; a symbolic (dim_param) or unknown one is dynamic.
    shape = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else DYNAMIC
        for d in tensor.shape.dim
    )
    return TensorSpec(value.name, dtype, shape)


def onnx_signature(model: onnx.ModelProto) -> Signature:
    """Inputs (initializers excluded) and outputs, named and typed as the graph declares them."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_spec(v) for v in model.graph.output)
    try:
        return Signature(inputs, outputs)
    except ValueError as exc:
        raise SourceInvalid(f"the ONNX graph's inputs and outputs: {exc}") from exc


class OnnxReference:
    """An ONNX model run as the parity reference (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, signature: Signature) -> None:
        self._model = model
        self._outputs = list(signature.output_names)
        self._evaluator: Any = None
        self._session: Any = None
        self.name = EVALUATOR
        self.fallback_reason: str | None = None
        try:
            from onnx.reference import ReferenceEvaluator

            self._evaluator = ReferenceEvaluator(model)
        except Exception as exc:  # an operator the evaluator has no implementation of
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        import onnxruntime as ort

        self.fallback_reason = (
            f"{EVALUATOR} cannot run this model: {str(exc).splitlines()[0][:200]}"
        )
        self.name = ORT_UNOPTIMISED
        self._evaluator = None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory() as tmp:  # onnxruntime reads external data by path
            path = single_file(self._model, Path(tmp))
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        if self._evaluator is not None:
            try:
                values = self._evaluator.run(self._outputs, feed)
            except Exception as exc:
                self._fall_back(exc)
            else:
                return dict(zip(self._outputs, (np.asarray(v) for v in values), strict=True))
        values = self._session.run(self._outputs, feed)
        return dict(zip(self._outputs, values, strict=True))
