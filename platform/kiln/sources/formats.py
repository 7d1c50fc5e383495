"""What a model file is, read from its first bytes and zip directory, before anything loads it.

Pickle is refused here, before any library sees the file: `torch.load` and `pickle.load` run
the code a pickle names, so a "weights" file can do anything. The formats Kiln accepts hold no
code: ONNX (protobuf), safetensors (a JSON header and raw tensors) and torch.export's .pt2
archive (a JSON graph and raw weights). torch.save writes pickle, either bare (protocol 2+
starts with 0x80) or inside a zip archive as `<name>/data.pkl`.
"""

from __future__ import annotations

import json
import struct
import zipfile
from enum import StrEnum
from pathlib import Path

from kiln.errors import PickleRefused, SourceInvalid

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
"""safetensors' own limit on the JSON header length."""

_SAVE_AS = (
    "save weights with safetensors (safetensors.torch.save_file(model.state_dict(), "
    "'weights.safetensors')) and register with --module, export the model with "
    "torch.export.save, or export it to ONNX"
)


class FileFormat(StrEnum):
    PICKLE = "pickle"
    TORCH_ZIP = "torch.save zip (pickle inside)"
    EXPORTED = "torch.export program (.pt2)"
    AOTI_PACKAGE = "AOTInductor package (.pt2)"
    SAFETENSORS = "safetensors"
    ZIP = "zip archive"
    OTHER = "other"


def _zip_format(path: Path) -> FileFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return FileFormat.OTHER
    if any(n.endswith(".pkl") for n in names):
        return FileFormat.TORCH_ZIP
    if any("/aotinductor/" in n or n.startswith("aotinductor/") for n in names):
        return FileFormat.AOTI_PACKAGE
    if any(n.endswith("archive_format") for n in names) and any("/models/" in n for n in names):
        return FileFormat.EXPORTED
    return FileFormat.ZIP


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= min(SAFETENSORS_MAX_HEADER, size - 8) and head[8:9] == b"{"


def sniff(path: Path) -> FileFormat:
    """The format of the file at `path`, from its bytes (never its suffix)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return FileFormat.PICKLE
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if _is_safetensors(head, path.stat().st_size):
        return FileFormat.SAFETENSORS
    return FileFormat.OTHER


def refuse_pickle(path: Path, what: str) -> FileFormat:
    """`sniff(path)`, raising `PickleRefused` when it holds pickle data; `what` names the
    option the file was given to (for the message)."""
    if not path.is_file():
        raise SourceInvalid(f"{what} {path}: no such file")
    found = sniff(path)
    if found in (FileFormat.PICKLE, FileFormat.TORCH_ZIP):
        raise PickleRefused(
            f"{what} {path} is a pickle-based file ({found.value}); Kiln loads no pickle, "
            f"since unpickling runs arbitrary code. Instead, {_SAVE_AS}"
        )
    return found


def pickled_members(archive: zipfile.ZipFile, prefix: str) -> list[str]:
    """Weights and constants of a .pt2 archive that torch.export stored as pickles (tensor
    subclasses, script objects): the ones `torch.export.load` would unpickle."""
    found = []
    for config in (
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
    ):
        name = prefix + config
        if name not in archive.namelist():
            continue
        try:
            entries = json.loads(archive.read(name)).get("config", {})
        except ValueError as exc:
            raise SourceInvalid(f"{name} in the archive is not valid JSON ({exc})") from exc
        for key, meta in entries.items():
            path_name = str(meta.get("path_name", ""))
            if meta.get("use_pickle") or path_name.startswith(("custom_obj", "opaque_obj")):
                found.append(key)
    return found
