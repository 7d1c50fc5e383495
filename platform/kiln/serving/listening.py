"""Why a server cannot listen where it was told to, for every endpoint of `kiln serve`
(gRPC, HTTP, metrics), as the error it stops with."""

from __future__ import annotations

import errno
import socket

from kiln.errors import PortUnavailable


def listen_problem(host: str, port: int, what: str, option: str) -> PortUnavailable:
    """Why `host:port` cannot be listened on, as the error to stop with (binds a probe socket
    to learn the reason; called only after a bind failed)."""
    reason = None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        reason = exc.errno
    if reason == errno.EADDRINUSE:
        return PortUnavailable(
            f"{what} port {port} is in use; pick another with {option}, or 0 for a free one"
        )
    if reason == errno.EACCES:
        return PortUnavailable(
            f"{what} port {port} needs privileges this process lacks; pick one above 1023 "
            f"with {option}, or 0 for a free one"
        )
    if reason == errno.EADDRNOTAVAIL:
        return PortUnavailable(
            f"cannot listen on {host}: it is not an address of this machine; pick one with "
            "--host (0.0.0.0 for every interface, 127.0.0.1 for this machine only)"
        )
    return PortUnavailable(
        f"cannot listen on {host}:{port} for {what}; pick another port with {option} (0 for a "
        "free one) or another address with --host"
    )
