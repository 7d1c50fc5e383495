"""What an artifact was built with and for: library versions and the target hardware."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from kiln import __version__
from kiln_engines import host_info
from kiln_engines.host import Gpu


def library_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of `distributions` (those not installed are left out), plus kiln."""
    found = {"kiln": __version__}
    for dist in distributions:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def cpu_target(**extra: Any) -> dict[str, Any]:
    """The artifact's target when it runs on this host's CPU."""
    host = host_info()
    return {"device": "cpu", "machine": host.machine, "cpu": host.cpu, **extra}


def gpu_target(gpu: Gpu, **extra: Any) -> dict[str, Any]:
    """The artifact's target when it runs on `gpu`."""
    return {
        "device": "cuda",
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "machine": host_info().machine,
        **extra,
    }


def hardware() -> dict[str, Any]:
    """This host, for the record of where an artifact was built and measured."""
    return host_info().to_dict()
