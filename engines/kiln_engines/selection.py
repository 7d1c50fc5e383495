"""Choice at load: the fastest artifact this host can run, unless the caller names one.

Serving holds a version's artifacts (kind and the device each was built for) and asks which to
load. Preference, fastest first: TensorRT on CUDA, AOTInductor on CUDA, onnxruntime (on CUDA
when onnxruntime-gpu is present, else CPU), AOTInductor on CPU. An ONNX model runs on whichever
device onnxruntime has here, so its device is "any". Nothing here imports torch; a backend's
library is imported only when its status is needed to decide.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from kiln_engines.backends import KIND_TO_BACKEND, BackendStatus
from kiln_engines.backends import status as backend_status
from kiln_engines.errors import BackendUnavailable, EngineError

ANY_DEVICE = "any"

PREFERENCE: tuple[tuple[str, str], ...] = (
    ("tensorrt", "cuda"),
    ("aotinductor", "cuda"),
    ("onnxruntime", "cuda"),
    ("onnx", "cuda"),
    ("onnxruntime", "cpu"),
    ("onnx", "cpu"),
    ("aotinductor", "cpu"),
)
"""(artifact kind, device) pairs, fastest first."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """An artifact that could be loaded: its kind and the device it was built for ("any")."""

    kind: str
    device: str = ANY_DEVICE


@dataclass(frozen=True, slots=True)
class Selection:
    """A candidate and the device to load it on (pass as `EngineOptions(device=...)`)."""

    candidate: Candidate
    device: str


@functools.cache
def _cached_status(backend: str) -> BackendStatus:
    return backend_status(backend)


def _fits(candidate: Candidate, device: str) -> bool:
    return candidate.device in (device, ANY_DEVICE)


def rank(
    candidates: Iterable[Candidate],
    *,
    override: str | None = None,
    status_of: Callable[[str], BackendStatus] = _cached_status,
) -> Iterator[Selection]:
    """Yield the candidates this host can run, best first.

    `override` ("onnxruntime", "aotinductor:cpu", ...) keeps only matching candidates: a named
    choice is honoured or refused, never silently replaced.
    """
    pool = list(dict.fromkeys(candidates))
    order = PREFERENCE
    if override:
        kind, _, device = override.partition(":")
        if kind not in KIND_TO_BACKEND:
            raise EngineError(
                f"unknown artifact kind {kind!r} in {override!r}; kinds: "
                f"{', '.join(KIND_TO_BACKEND)}",
                code="invalid_argument",
            )
        order = tuple(p for p in PREFERENCE if p[0] == kind and (not device or p[1] == device))
    for kind, device in order:
        matching = [c for c in pool if c.kind == kind and _fits(c, device)]
        if not matching:
            continue
        status = status_of(KIND_TO_BACKEND[kind])
        if status.usable and device in status.devices:
            yield Selection(matching[0], device)


def choose(
    candidates: Iterable[Candidate],
    *,
    override: str | None = None,
    status_of: Callable[[str], BackendStatus] = _cached_status,
) -> Selection:
    """The best candidate for this host; `BackendUnavailable` says why none can run."""
    pool = list(candidates)
    for selection in rank(pool, override=override, status_of=status_of):
        return selection
    if not pool:
        raise BackendUnavailable("there are no compiled artifacts to choose from; `kiln compile`")
    reasons = []
    for backend in sorted({KIND_TO_BACKEND.get(c.kind, c.kind) for c in pool}):
        if backend not in KIND_TO_BACKEND.values():
            continue
        s = status_of(backend)
        hint = f" ({s.how_to_get})" if s.how_to_get else ""
        devices = f"runs on {', '.join(s.devices)}" if s.usable else s.reason
        reasons.append(f"{backend}: {devices}{hint}")
    offered = ", ".join(f"{c.kind}/{c.device}" for c in pool)
    wanted = f" matching {override!r}" if override else ""
    raise BackendUnavailable(
        f"none of the artifacts ({offered}){wanted} can run on this host; " + "; ".join(reasons)
    )
