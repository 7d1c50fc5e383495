"""A source as the user names it (`SourceSpec`) and as Kiln holds it once loaded and checked
(`LoadedSource`): its signature and a way to run it as the reference.

`load_source` is what `kiln register` runs on the user's files; `open_version_source` reopens
a registered version's source from its checkpoint blob (what `kiln compile` runs), with the
signature the registration recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from kiln.errors import InvalidArgument, SourceInvalid
from kiln.sources.module import module_source, probe_outputs, run_module
from kiln.sources.onnx_model import OnnxReference, onnx_signature, read_onnx
from kiln.sources.program import ProgramModule, load_program, program_signature
from kiln_engines import Signature, TensorSpec

SourceKind = Literal["onnx", "module", "exported"]
KINDS: tuple[SourceKind, ...] = ("onnx", "module", "exported")

Predict = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class SourceSpec:
    """What to register: one ONNX file, a builder with weights, or an exported program.

    `inputs` declares a module's inputs (required for "module"); for an exported program it
    may rename the program's inputs (same count, dtypes and ranks). `output_names` names the
    outputs of a module or program (default: by task, see `kiln.sources.registration`).
    """

    kind: SourceKind
    path: Path
    """The .onnx file, the .pt2 program, or the module's .safetensors weights."""
    builder: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[TensorSpec, ...] = ()
    output_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.kind not in KINDS:
            raise InvalidArgument(f"unknown source kind '{self.kind}'; kinds: {', '.join(KINDS)}")
        if self.kind == "module" and (not self.builder or not self.inputs):
            raise InvalidArgument(
                "a module source needs its builder and its inputs: --module pkg.mod:fn "
                "--weights w.safetensors --input features:FP32:-1,10"
            )
        if self.kind == "onnx" and (self.inputs or self.output_names):
            raise InvalidArgument(
                "--input/--output do not apply to --onnx: the graph names and types its inputs "
                "and outputs (rename them in the ONNX file)"
            )


@dataclass
class LoadedSource:
    """A checked source: its signature (outputs possibly still unnamed) and the reference."""

    kind: SourceKind
    path: Path
    signature: Signature
    module: nn.Module | None = None
    """The PyTorch module (module sources; the program's module for exported ones)."""
    program: torch.export.ExportedProgram | None = None
    onnx_model: onnx.ModelProto | None = None
    max_batch: int | None = None
    """The largest batch the source itself admits (an exported program's batch bound)."""
    _onnx_reference: OnnxReference | None = None

    def reference(self) -> Predict:
        """Runs the source itself: fp32 eager PyTorch, or the ONNX reference evaluator."""
        if self.onnx_model is not None:
            if self._onnx_reference is None:
                self._onnx_reference = OnnxReference(self.onnx_model, self.signature)
            return self._onnx_reference
        module = self.module
        assert module is not None
        names = self.signature.input_names
        outputs = self.signature.output_names

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = run_module(module, inputs, names)
            return {n: t.numpy() for n, t in zip(outputs, result, strict=True)}

        return run

    @property
    def reference_name(self) -> str:
        if self.onnx_model is not None:
            return self.reference().name  # type: ignore[attr-defined, no-any-return]
        return "pytorch eager (fp32)"

    def renamed(self, signature: Signature) -> LoadedSource:
        return dataclasses.replace(self, signature=signature, _onnx_reference=None)


def _rename_inputs(
    signature: Signature, declared: tuple[TensorSpec, ...], path: Path
) -> tuple[TensorSpec, ...]:
    if not declared:
        return signature.inputs
    if len(declared) != len(signature.inputs):
        raise InvalidArgument(
            f"--exported {path} takes {len(signature.inputs)} input(s) "
            f"({', '.join(signature.input_names)}), --input declares {len(declared)}"
        )
    renamed = []
    for mine, theirs in zip(declared, signature.inputs, strict=True):
        if mine.dtype != theirs.dtype or len(mine.shape) != len(theirs.shape):
            raise InvalidArgument(
                f"--input {mine.describe()} does not match the program's input "
                f"{theirs.describe()}: --input may rename an exported program's inputs, not "
                "change their datatype or rank"
            )
        renamed.append(TensorSpec(mine.name, theirs.dtype, theirs.shape))
    return tuple(renamed)


def _outputs(found: list[tuple[str, tuple[int, ...]]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"output_{i}", dtype, shape) for i, (dtype, shape) in enumerate(found))


def load_source(spec: SourceSpec) -> LoadedSource:
    """Load and check the files `spec` names. Raises `SourceInvalid` (or `PickleRefused`,
    `ModelBuilderNotFound`) saying what is wrong with them."""
    if spec.kind == "onnx":
        model = read_onnx(spec.path)
        return LoadedSource("onnx", spec.path, onnx_signature(model), onnx_model=model)
    if spec.kind == "exported":
        program = load_program(spec.path)
        signature, _, bound = program_signature(program)
        inputs = _rename_inputs(signature, spec.inputs, spec.path)
        return LoadedSource(
            "exported",
            spec.path,
            Signature(inputs, signature.outputs),
            module=ProgramModule(program),
            program=program,
            max_batch=bound,
        )
    assert spec.builder is not None
    module = module_source(spec.builder, spec.model_args, spec.path)
    found = probe_outputs(module, spec.inputs, f"module built by '{spec.builder}'")
    return LoadedSource("module", spec.path, Signature(spec.inputs, _outputs(found)), module=module)


def open_version_source(config: Mapping[str, Any], blob: Path) -> LoadedSource:
    """Reopen a registered version's source from its checkpoint blob, with the signature its
    registration recorded (`config["signature"]`, `config["source"]`)."""
    source = config.get("source") or {}
    kind = source.get("kind")
    try:
        signature = Signature.from_dict(config["signature"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceInvalid(f"the version's config records no usable signature ({exc})") from exc
    if kind == "onnx":
        return LoadedSource("onnx", blob, signature, onnx_model=read_onnx(blob))
    if kind == "exported":
        program = load_program(blob)
        return LoadedSource("exported", blob, signature, ProgramModule(program), program)
    if kind == "module":
        module = module_source(str(source.get("builder")), source.get("model_args") or {}, blob)
        return LoadedSource("module", blob, signature, module=module)
    raise SourceInvalid(f"unknown source kind {kind!r} in the version's config")
