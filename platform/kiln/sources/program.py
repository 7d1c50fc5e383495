"""Exported-program sources: a `torch.export.save` archive (.pt2), loaded without pickle.

A .pt2 archive holds the graph as JSON and the weights as raw bytes, plus the example inputs
the program was captured with, which torch pickles (`data/sample_inputs/*.pt`). Kiln never
needs those and never unpickles them: it loads a copy of the archive with that member emptied
(torch then leaves `example_inputs` unset), and refuses archives whose weights or constants
themselves were pickled (tensor subclasses, script objects).

The signature comes from the program: its user inputs and outputs, with a symbolic size
(a `torch.export.Dim`) as -1, and the batch axis' upper bound as the maximum batch.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from kiln.errors import PickleRefused, SourceInvalid
from kiln.sources.formats import FileFormat, pickled_members, refuse_pickle
from kiln_engines import DYNAMIC, Signature, TensorSpec

SAMPLE_INPUTS = "data/sample_inputs/"


class ProgramModule(torch.nn.Module):
    """An exported program's module, usable where Kiln expects an `nn.Module`.

    `ExportedProgram.module()` refuses `.eval()` and `.train()` (the mode was fixed when the
    program was captured), which every PyTorch caller does; here they leave it as it is.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program_module = program.module()

    def train(self, mode: bool = True) -> ProgramModule:
        return self

    def forward(self, *inputs: torch.Tensor) -> object:
        return self.program_module(*inputs)


def _prefix(archive: zipfile.ZipFile) -> str:
    for name in archive.namelist():
        if name.endswith("archive_format"):
            return name[: -len("archive_format")]
    return ""


def load_program(path: Path) -> torch.export.ExportedProgram:
    """The ExportedProgram saved at `path`; `SourceInvalid`/`PickleRefused` when it is not one
    or would need pickle to load."""
    found = refuse_pickle(path, "--exported")
    if found is FileFormat.AOTI_PACKAGE:
        raise SourceInvalid(
            f"--exported {path} is an AOTInductor package (compiled code), not an exported "
            "program; register the torch.export.save() output the package was compiled from"
        )
    if found is not FileFormat.EXPORTED:
        raise SourceInvalid(
            f"--exported {path} is not a torch.export program ({found.value}); save one with "
            "torch.export.save(torch.export.export(model, example_args), 'program.pt2')"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as source:
        prefix = _prefix(source)
        pickled = pickled_members(source, prefix)
        if pickled:
            raise PickleRefused(
                f"--exported {path} stores {', '.join(pickled[:5])} as pickle (tensor "
                "subclasses or script objects); Kiln loads no pickle. Export a model whose "
                "weights are plain tensors"
            )
        with zipfile.ZipFile(buffer, "w") as copy:
            for info in source.infolist():
                data = (
                    b"" if info.filename.startswith(prefix + SAMPLE_INPUTS) else source.read(info)
                )
                copy.writestr(info, data)
    buffer.seek(0)
    try:
        return torch.export.load(buffer)
    except Exception as exc:
        raise SourceInvalid(
            f"torch {torch.__version__} cannot load the exported program {path}: "
            f"{str(exc).splitlines()[0][:300]}. Save it again with this torch version's "
            "torch.export.save"
        ) from exc


def _shape(value: object) -> tuple[int, ...]:
    assert isinstance(value, torch.Tensor)
    return tuple(d if isinstance(d, int) else DYNAMIC for d in value.shape)


def program_signature(
    program: torch.export.ExportedProgram,
) -> tuple[Signature, list[str], int | None]:
    """The program's signature (outputs named output_0...), the names of its user inputs as
    traced, and the largest batch its batch axis admits (None: unbounded)."""
    from torch.export.graph_signature import InputKind, OutputKind

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind is not InputKind.USER_INPUT:
            continue
        name = getattr(spec.arg, "name", "")
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor):
            raise SourceInvalid(
                f"the exported program takes a non-tensor input '{name}'; Kiln engines take "
                "tensors only"
            )
        inputs.append(TensorSpec(name, str(value.dtype).removeprefix("torch."), _shape(value)))
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = output_node.args[0]
    values = values if isinstance(values, list | tuple) else (values,)
    outputs = []
    user_outputs = [
        i
        for i, s in enumerate(program.graph_signature.output_specs)
        if s.kind is OutputKind.USER_OUTPUT
    ]
    for position, index in enumerate(user_outputs):
        node = values[index]
        value = getattr(node, "meta", {}).get("val")
        if not isinstance(value, torch.Tensor):
            raise SourceInvalid("the exported program returns a non-tensor output")
        outputs.append(
            TensorSpec(f"output_{position}", str(value.dtype).removeprefix("torch."), _shape(value))
        )
    max_batch = _batch_bound(program, placeholders, [s.name for s in inputs])
    traced = [s.name for s in inputs]
    return Signature(tuple(inputs), tuple(outputs)), traced, max_batch


def _batch_bound(
    program: torch.export.ExportedProgram, placeholders: dict[str, torch.fx.Node], names: list[str]
) -> int | None:
    for name in names:
        value = placeholders[name].meta.get("val")
        if not isinstance(value, torch.Tensor) or not value.shape:
            continue
        first = value.shape[0]
        if isinstance(first, torch.SymInt):
            bound = program.range_constraints.get(first.node.expr)
            upper = getattr(bound, "upper", None)
            try:
                return int(upper) if upper is not None else None
            except (TypeError, ValueError):  # int_oo: no bound
                return None
    return None
