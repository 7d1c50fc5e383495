"""Whether a process another Kiln process recorded (a writer's pid) is still running."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while a process with `pid` exists on this host (whoever owns it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True
