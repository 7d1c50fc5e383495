"""torch ► torch.export program ► one ONNX file with a dynamic batch axis, checked.

The program is captured once with `torch.export` (the batch axis a named dynamic dimension) and
shared: the ONNX exporter translates it, and AOTInductor compiles it. The ONNX file is written
as a single file (no external data), passes `onnx.checker` and strict shape inference, and
carries the engine signature in its metadata so every engine built from it knows its inputs.

When a model cannot be exported, `EngineBuildFailed` names the operator that failed and says
what to do about it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from kiln.errors import EngineBuildFailed
from kiln_engines import DYNAMIC, Signature
from kiln_engines.signature import SIGNATURE_METADATA_KEY

OPSET = 18
"""ONNX opset: new enough for every operator the built-in models use, old enough for
TensorRT 10's parser and onnxruntime >= 1.14."""

# Where exporters name the operator they could not handle, most specific first.
_OPERATOR_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.:]+)'"),  # dynamo exporter: no ONNX function for an op
    re.compile(r"Exporting the operator '([\w.:]+)'"),  # TorchScript exporter
    re.compile(r"unrecognized namespace ([\w.:]+)"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),  # a failing FX node
    re.compile(r"call_function\[target=([\w.]+)\]"),
)


class _NoTorchvisionNotice(logging.Filter):
    """Drops the ONNX exporter's "torchvision is not installed. Skipping torchvision::nms"
    warnings (one per torchvision operator, every export): Kiln's models use no torchvision
    operator, so they only bury Kiln's own output. Any other exporter warning still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed. Skipping")


# The logger torch.onnx's dynamo exporter registers its operator translations with.
logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_NoTorchvisionNotice())


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep exporter chatter off stdout (which `--json` reserves) and deprecation noise away."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def failing_operator(exc: BaseException) -> str | None:
    """The operator an export error is about, searching the whole exception chain."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = "\n".join(str(e) for e in chain)
    for pattern in _OPERATOR_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).removesuffix(".default")
    return None


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def example_inputs(
    signature: Signature, samples: Mapping[str, np.ndarray]
) -> tuple[torch.Tensor, ...]:
    """Two rows per input, in signature order: a batch of 1 would be specialised to a constant."""
    tensors = []
    for spec in signature.inputs:
        rows = np.asarray(samples[spec.name][:2], dtype=spec.dtype)
        if rows.shape[0] < 2:
            rows = np.concatenate([rows, rows])[:2]
        tensors.append(torch.from_numpy(np.ascontiguousarray(rows)))
    return tuple(tensors)


def export_program(
    module: nn.Module,
    signature: Signature,
    example: tuple[torch.Tensor, ...],
    *,
    max_batch: int,
) -> torch.export.ExportedProgram:
    """Capture `module` with a dynamic batch axis (1..max_batch) on every batched input, and
    every other -1 axis (a sequence length, say) dynamic too.

    Other axes are `Dim.AUTO`: torch.export works out which of them must be equal (a token
    and a mask tensor of one length), where named dimensions of their own would be refused.
    An axis the model forces to one size is specialised; parity's second length finds it.
    """
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    dynamic: tuple[Any, ...] = tuple(
        {
            axis: batch if axis == 0 else torch.export.Dim.AUTO
            for axis, size in enumerate(spec.shape)
            if size == DYNAMIC
        }
        for spec in signature.inputs
    )
    parameters = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        dynamic = (dynamic,)  # forward(*inputs): torch.export sees one tuple argument
    try:
        with quiet(), torch.no_grad():
            return torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
    except Exception as exc:
        op = failing_operator(exc)
        where = f" at operator '{op}'" if op else ""
        raise EngineBuildFailed(
            f"torch.export could not capture the model{where}: {_first_line(exc)}. Models must "
            "be traceable without Python control flow on tensor values; rewrite that part of "
            "forward() (torch.cond for data-dependent branches)"
        ) from exc


def export_onnx(
    program: torch.export.ExportedProgram,
    signature: Signature,
    dest: Path,
    *,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """Translate a captured program to ONNX at `dest`; check it and stamp the signature."""
    try:
        with quiet():
            torch.onnx.export(
                program,
                f=str(dest),
                input_names=list(signature.input_names),
                output_names=list(signature.output_names),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        op = failing_operator(exc)
        if op is None:
            raise EngineBuildFailed(
                f"ONNX export failed: {_first_line(exc)}; compile with --target aotinductor, "
                "which does not go through ONNX"
            ) from exc
        raise EngineBuildFailed(
            f"ONNX export failed on operator '{op}': opset {opset} has no translation for it. "
            f"Rewrite that part of the model with supported operators, register an ONNX "
            f"translation for '{op}', or compile with --target aotinductor (no ONNX involved)"
        ) from exc
    model = onnx.load(str(dest))
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise EngineBuildFailed(
            f"the exported ONNX model does not pass onnx.checker: {exc}"
        ) from exc
    _require_dynamic_axes(model, signature)
    onnx.helper.set_model_props(
        model, {SIGNATURE_METADATA_KEY: json.dumps(signature.to_dict(), sort_keys=True)}
    )
    onnx.save(model, str(dest))
    return model


def dynamic_axes(model: onnx.ModelProto) -> dict[str, tuple[bool, ...]]:
    """Per graph input, whether each axis is dynamic (a named or unknown size, not a number)."""
    return {
        graph_input.name: tuple(
            not dim.HasField("dim_value") for dim in graph_input.type.tensor_type.shape.dim
        )
        for graph_input in model.graph.input
    }


def _require_dynamic_axes(model: onnx.ModelProto, signature: Signature) -> None:
    """Every axis the signature calls dynamic must be dynamic in the graph: the batch axis,
    and a text model's sequence axis (a model that fixed it takes one length only)."""
    found = dynamic_axes(model)
    for spec in signature.inputs:
        dims = found.get(spec.name)
        if dims is None or not spec.shape:
            continue
        if spec.shape[0] == DYNAMIC and (not dims or not dims[0]):
            raise EngineBuildFailed(
                f"the exported ONNX model fixed the batch size of input '{spec.name}'; "
                "the model's forward() must not depend on the batch size (e.g. a reshape to a "
                "constant batch): use x.flatten(1) or x.reshape(x.shape[0], -1)"
            )
        fixed = [
            axis
            for axis, size in enumerate(spec.shape[1:], start=1)
            if size == DYNAMIC and axis < len(dims) and not dims[axis]
        ]
        if fixed:
            raise EngineBuildFailed(
                f"the exported ONNX model fixed axis {fixed[0]} of input '{spec.name}', which "
                "the signature declares dynamic (a sequence length); forward() must not depend "
                "on that size: take it from the tensor (x.shape[1]) rather than a constant"
            )
