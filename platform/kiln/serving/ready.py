"""The line `kiln serve` prints once it accepts requests, and the one parser for it.

    kiln serve ready: grpc port 8001, http port 8000, metrics port 8002; serving digits:1 (onnx/cpu)

It is the only line the server writes to stdout (its log goes to stderr), so a process that
starts `kiln serve` waits for it to learn the ports a `--port 0` server picked
(`kiln.serving.launcher` does). The format is a contract with scripts outside Kiln too: it is
written by `ready_line` and read by `parse_ready_line`, nowhere else, and the two change
together. This module imports nothing of the server, so anything can read the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "kiln serve ready:"

_NO_MODELS = "no models"

_LINE = re.compile(
    re.escape(PREFIX)
    + r" grpc port (\d+)(?:, http port (\d+))?(?:, metrics port (\d+))?; serving (.+?)\s*\Z"
)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a started server listens, and what it serves (`name:version (kind/device)`)."""

    grpc_port: int
    metrics_port: int | None
    """None when the server serves no metrics (`--no-metrics`)."""
    models: tuple[str, ...]
    http_port: int | None = None
    """None when the server serves no HTTP (`--no-http`)."""


def ready_line(endpoints: Endpoints) -> str:
    """The ready line for `endpoints`, without its newline."""
    http = "" if endpoints.http_port is None else f", http port {endpoints.http_port}"
    metrics = "" if endpoints.metrics_port is None else f", metrics port {endpoints.metrics_port}"
    served = ", ".join(endpoints.models) or _NO_MODELS
    return f"{PREFIX} grpc port {endpoints.grpc_port}{http}{metrics}; serving {served}"


def parse_ready_line(line: str) -> Endpoints | None:
    """The endpoints a ready line announces; None for any other line."""
    match = _LINE.match(line)
    if match is None:
        return None
    grpc_port, http_port, metrics_port, served = match.groups()
    models = () if served == _NO_MODELS else tuple(served.split(", "))
    return Endpoints(
        int(grpc_port),
        int(metrics_port) if metrics_port else None,
        models,
        int(http_port) if http_port else None,
    )
