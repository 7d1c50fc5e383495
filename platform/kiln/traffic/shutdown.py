"""Flush-on-signal for processes that own a logger but no shutdown sequence of their own.

`kiln serve` closes its logger as part of its own SIGTERM drain; a script or worker that only
logs can call `close_on_signals(logger)` so that SIGTERM (and SIGINT) write every buffered row
before the process exits.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Protocol


class Closeable(Protocol):
    def close(self, timeout: float | None = None) -> bool: ...


def close_on_signals(
    *writers: Closeable,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    timeout: float | None = 30.0,
) -> None:
    """On any of `signals`: close `writers` (writing what they buffer), then do what the
    signal did before (a handler that was installed runs; otherwise exit 128 + signal).

    Must be called from the main thread (Python delivers signals there)."""
    for sig in signals:
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: object = previous) -> None:
            for writer in writers:
                writer.close(timeout)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                sys.exit(128 + signum)

        signal.signal(sig, handler)
