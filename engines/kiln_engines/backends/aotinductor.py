"""AOTInductor: a .pt2 package of ahead-of-time compiled C++/CUDA kernels, run through torch.

The one backend that imports torch, and only inside functions. A package is compiled for one
device type and one instruction set (AVX2, AVX512, a CUDA compute capability), which it records
in its metadata; that is checked here before any compiled code is loaded, because running a
kernel built for another CPU would kill the process with SIGILL instead of raising.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kiln_engines.backends import BackendStatus
from kiln_engines.engine import Engine, EngineOptions
from kiln_engines.errors import BackendUnavailable, EngineError, EngineLoadError
from kiln_engines.host import cuda_gpus
from kiln_engines.signature import SIGNATURE_METADATA_KEY, Signature

NAME = "aotinductor"
HOW_TO_GET = "pip install 'kiln[train]' (PyTorch); building packages also needs a C++ compiler"

# torch.backends.cpu.get_cpu_capability() values, weakest first.
_ISA_ORDER = ("DEFAULT", "AVX2", "AVX512")

# torch.set_num_threads is process-wide: serialise changes so two loads do not race.
_threads_lock = threading.Lock()


def status() -> BackendStatus:
    if importlib.util.find_spec("torch") is None:
        return BackendStatus(NAME, False, "PyTorch is not installed", HOW_TO_GET)
    import shutil

    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    notes = [f"torch {torch.__version__}"]
    notes.append(f"builds with {compiler}" if compiler else "no C++ compiler: can load, not build")
    if "cuda" not in devices:
        notes.append("CUDA: no CUDA device or a CPU-only torch build")
    return BackendStatus(NAME, True, "; ".join(notes), None, tuple(devices), torch.__version__)


def read_metadata(path: Path) -> dict[str, str]:
    """The package's metadata, read from the archive without loading any compiled code.

    Raises `EngineLoadError` (data_loss) when the archive is damaged or is not an AOTInductor
    package.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            if damaged is not None:
                raise EngineLoadError(
                    f"{path} is corrupt: archive member {damaged} fails its CRC check; "
                    "rebuild it with `kiln compile`"
                )
            names = [
                n
                for n in archive.namelist()
                if "/aotinductor/" in n and n.endswith("wrapper_metadata.json")
            ]
            if not names:
                raise EngineLoadError(
                    f"{path} is a zip archive but not an AOTInductor package (no compiled model "
                    "in it); build one with `kiln compile --target aotinductor`"
                )
            metadata = json.loads(archive.read(sorted(names)[0]))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise EngineLoadError(
            f"{path} is not a readable AOTInductor package ({exc}); the file is corrupt or "
            "truncated, rebuild it with `kiln compile`"
        ) from exc
    return {str(k): str(v) for k, v in metadata.items()}


def _check_fits_host(path: Path, metadata: Mapping[str, str], device_type: str) -> None:
    import torch

    device = metadata.get("AOTI_DEVICE_KEY", "cpu")
    if device != device_type:
        raise EngineLoadError(
            f"{path} was compiled for {device} but device {device_type!r} was requested; "
            f"load it with device '{device}' or build a package for {device_type}",
            code="failed_precondition",
        )
    if device == "cpu":
        built = metadata.get("AOTI_CPU_ISA", "DEFAULT").upper()
        here = torch.backends.cpu.get_cpu_capability().upper()
        known = built in _ISA_ORDER and here in _ISA_ORDER
        if known and _ISA_ORDER.index(built) > _ISA_ORDER.index(here):
            raise EngineLoadError(
                f"{path} was compiled for {built} CPUs; this CPU supports {here}. Rebuild it "
                "here with `kiln compile --target aotinductor`, or serve the onnxruntime artifact",
                code="failed_precondition",
            )
        return
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"{path} is a CUDA package but torch {torch.__version__} sees no CUDA device; "
            "run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch"
        )
    built_cc = metadata.get("AOTI_COMPUTE_CAPABILITY", "")
    gpus = cuda_gpus()
    if built_cc and gpus:
        here_cc = {g.compute_capability.replace(".", "") for g in gpus}
        if built_cc.replace(".", "") not in here_cc:
            raise EngineLoadError(
                f"{path} was compiled for CUDA compute capability {built_cc}; this host's GPUs "
                f"have {', '.join(sorted(here_cc))}. Rebuild it here with "
                "`kiln compile --target aotinductor`",
                code="failed_precondition",
            )


def open_engine(path: Path, options: EngineOptions, kind: str = NAME) -> AOTInductorEngine:
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailable(f"the aotinductor backend needs PyTorch; {HOW_TO_GET}")
    metadata = read_metadata(path)
    if SIGNATURE_METADATA_KEY not in metadata:
        raise EngineLoadError(
            f"{path} carries no Kiln signature in its metadata; build it with "
            "`kiln compile --target aotinductor`",
            code="failed_precondition",
        )
    signature = Signature.from_dict(json.loads(metadata[SIGNATURE_METADATA_KEY]))
    _check_fits_host(path, metadata, options.device_type)

    import torch

    if options.intra_op_threads:
        with _threads_lock:
            torch.set_num_threads(options.intra_op_threads)
    device_index = options.device_index if options.device_type == "cuda" else -1
    try:
        # A file object, not a path: registry blobs have no .pt2 suffix, which torch warns about.
        with open(path, "rb") as package:
            runner = torch._inductor.aoti_load_package(package, device_index=device_index)
    except Exception as exc:
        raise EngineLoadError(
            f"torch {torch.__version__} could not load {path}: {exc}. Rebuild it with "
            "`kiln compile --target aotinductor` on a host with this torch version",
            code="failed_precondition",
        ) from exc
    device = options.device if options.device_type == "cuda" else "cpu"
    return AOTInductorEngine(runner, signature, device)


class AOTInductorEngine(Engine):
    """An AOTInductor package behind the Engine interface."""

    kind = NAME

    def __init__(self, runner: Any, signature: Signature, device: str) -> None:
        super().__init__(signature, device)
        import torch

        self._torch = torch
        self._runner = runner
        self._input_names = signature.input_names
        self._output_names = signature.output_names
        self._torch_device = torch.device(device)
        self._on_cpu = device == "cpu"

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        tensors = []
        for name in self._input_names:
            array = inputs[name]
            # Compiled kernels assume dense row-major inputs, and torch warns about (and
            # cannot safely share) read-only buffers such as arrays decoded from a request.
            if not array.flags.c_contiguous or not array.flags.writeable:
                array = np.array(array, order="C", copy=True)
            tensor = torch.from_numpy(array)
            tensors.append(tensor if self._on_cpu else tensor.to(self._torch_device))
        try:
            with torch.inference_mode():
                result = self._runner(*tensors)
        except Exception as exc:
            raise EngineError(f"the AOTInductor package failed to run: {exc}") from exc
        outputs = result if isinstance(result, list | tuple) else (result,)
        if len(outputs) != len(self._output_names):
            raise EngineError(
                f"the AOTInductor package returned {len(outputs)} outputs, its signature "
                f"names {len(self._output_names)}; rebuild it with `kiln compile`"
            )
        return {
            name: tensor.detach().cpu().numpy()
            for name, tensor in zip(self._output_names, outputs, strict=True)
        }

    def _release(self) -> None:
        self._runner = None
