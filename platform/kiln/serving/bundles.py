"""`kiln serve --bundle PATH`: serve versions that arrive as export bundles (`kiln models
export`) instead of from a registry the server shares, as on KServe, whose storage initializer
downloads an InferenceService's `storageUri` to /mnt/models before the server starts.

PATH may be:

- a bundle file (`.tar`, `.tar.gz`, any name: the format is read, not guessed);
- an unpacked bundle, a directory holding `manifest.json` and `blobs/`: KServe's storage
  initializer unpacks a single `.tar`/`.tar.gz`/`.tgz`/`.zip` it downloads and deletes the
  archive, so a bundle stored as `s3://…/digits-3.tar.gz` arrives like this;
- a directory of bundle files and unpacked bundles (its top level; hidden entries, such as a
  volume's `..data` links, and other subdirectories, such as `lost+found`, are passed over).

Every bundle is imported into this process's registry (`Registry.import_bundle`: every blob's
sha256 is checked, importing the same bundle again changes nothing) and its version is served,
the newest of each model first (the one requests get without `model_version`). A `model_name`
(KServe's `{{.Name}}`, the InferenceService's name) serves them under that name: clients of a
KServe predictor address the model by the InferenceService's name.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kiln.errors import BundleInvalid, InvalidArgument, NotFound
from kiln.registry import Registry
from kiln.registry.bundles import MANIFEST, MAX_MANIFEST_BYTES
from kiln.registry.references import validate_name

EXPORT_HINT = "write one with kiln models export REF FILE"


def bundle_sources(path: Path) -> list[Path]:
    """The bundles at `path` (see the module docstring), in name order.

    Raises `NotFound` for a missing path and `BundleInvalid` for a directory with no bundles.
    Whether each file really is a bundle is checked when it is imported.
    """
    if not path.exists():
        raise NotFound(
            f"--bundle {path}: no such file or directory; pass a bundle file or a directory "
            f"of bundles ({EXPORT_HINT})"
        )
    if path.is_file() or _unpacked(path):
        return [path]
    if not path.is_dir():
        raise BundleInvalid(f"--bundle {path} is neither a file nor a directory")
    found = [
        entry
        for entry in sorted(path.iterdir())
        if not entry.name.startswith(".") and (entry.is_file() or _unpacked(entry))
    ]
    if not found:
        raise BundleInvalid(
            f"--bundle {path}: the directory holds no bundle (no files, no unpacked bundle "
            f"with a {MANIFEST}); {EXPORT_HINT}, and put it there (on KServe: the "
            "storageUri's file or folder)"
        )
    return found


def import_bundles(
    registry: Registry, path: Path, model_name: str | None = None, *, scratch: Path | None = None
) -> list[str]:
    """Import every bundle at `path` into `registry`; return the references to serve.

    Each model's newest version comes first (the default `kiln serve` gives that model), the
    others follow, newest first. With `model_name`, every bundle must hold the same model,
    imported under `model_name` instead (`InvalidArgument` otherwise). Raises what
    `bundle_sources` and `Registry.import_bundle` raise (`BundleInvalid` naming the file,
    `ArtifactCorrupted`). An unpacked or renamed bundle is rewritten as a file in `scratch`
    first (KILN_HOME: writable in a pod with a read-only root filesystem, and sized for
    artifacts), or in the system's temporary directory when None.
    """
    if model_name is not None:
        validate_name(model_name)
    sources = bundle_sources(path)
    if model_name is not None:
        names = {source: _manifest(source)["version"]["name"] for source in sources}
        if len(set(names.values())) > 1:
            held = ", ".join(f"{s.name}: {n}" for s, n in names.items())
            raise InvalidArgument(
                f"--model-name {model_name} names one model, but {path} holds bundles of "
                f"several ({held}); serve each model in a server (an InferenceService) of its "
                "own, or drop --model-name to serve them under their own names"
            )
    imported: list[tuple[str, int]] = []
    for source in sources:
        with _as_bundle_file(source, model_name, scratch) as file:
            version = registry.import_bundle(file).version
        imported.append((version.name, version.version))
    newest_first = sorted(set(imported), key=lambda nv: (nv[0], -nv[1]))
    return [f"{name}:{number}" for name, number in newest_first]


def _unpacked(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _manifest(source: Path) -> dict[str, Any]:
    """The manifest of a bundle file or an unpacked bundle, parsed only far enough to name
    its model (the import checks it completely)."""
    try:
        if source.is_dir():
            body = (source / MANIFEST).read_bytes()[:MAX_MANIFEST_BYTES]
        else:
            with tarfile.open(source, "r:*") as tar:
                member = tar.extractfile(MANIFEST)
                body = member.read(MAX_MANIFEST_BYTES) if member is not None else b""
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data["version"]["name"], str):
            raise ValueError("no model name")
    except (OSError, tarfile.TarError, EOFError, KeyError, TypeError, ValueError):
        raise BundleInvalid(
            f"{source} is not a Kiln bundle (no readable {MANIFEST} naming a model); {EXPORT_HINT}"
        ) from None
    return data


@contextmanager
def _as_bundle_file(source: Path, model_name: str | None, scratch: Path | None) -> Iterator[Path]:
    """`source` as a bundle file `import_bundle` reads: the file itself, or, for an unpacked
    bundle or a new model name, a bundle written for the import (its manifest renamed) in a
    temporary directory under `scratch`, removed afterwards."""
    if source.is_file() and model_name is None:
        yield source
        return
    manifest = _manifest(source)
    if model_name is not None:
        version = dict(manifest["version"])
        version["name"] = model_name
        manifest = {**manifest, "version": version}
    body = json.dumps(manifest).encode()
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=scratch) as folder:
        file = Path(folder) / "bundle.tar"
        with tarfile.open(file, "w") as out:
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(body)
            out.addfile(info, io.BytesIO(body))
            if source.is_dir():
                blobs = source / "blobs"
                for blob in sorted(blobs.iterdir()) if blobs.is_dir() else []:
                    if blob.is_file():
                        out.add(blob, arcname=f"blobs/{blob.name}", recursive=False)
            else:
                with tarfile.open(source, "r:*") as tar:
                    for member in tar:
                        if member.isfile() and member.name.startswith("blobs/"):
                            out.addfile(member, tar.extractfile(member))
        yield file
