"""Models Kiln did not train: ONNX files, PyTorch modules (builder + safetensors weights) and
exported programs (.pt2), checked and registered as versions the rest of Kiln can compile,
gate, serve and watch.

    from kiln.sources import RegisterOptions, SourceSpec, register_source, parse_inputs

    spec = SourceSpec("module", Path("w.safetensors"), builder="mymodels.tabular:build",
                      inputs=parse_inputs(["features:FP32:-1,10", "ids:INT64:-1,4"]))
    version = register_source(registry, "scorer", spec, RegisterOptions(task="regression"))

No pickle is ever loaded: `torch.save` files are refused before anything reads them.
Importing this package imports torch and onnx.
"""

from __future__ import annotations

from kiln.sources.formats import FileFormat, sniff
from kiln.sources.loading import (
    KINDS,
    LoadedSource,
    SourceKind,
    SourceSpec,
    load_source,
    open_version_source,
)
from kiln.sources.registration import RegisterOptions, register_source
from kiln.sources.tensors import KSERVE_TO_NUMPY, kserve_datatype, parse_input, parse_inputs

__all__ = [
    "KINDS",
    "KSERVE_TO_NUMPY",
    "FileFormat",
    "LoadedSource",
    "RegisterOptions",
    "SourceKind",
    "SourceSpec",
    "kserve_datatype",
    "load_source",
    "open_version_source",
    "parse_input",
    "parse_inputs",
    "register_source",
    "sniff",
]
