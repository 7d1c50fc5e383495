"""The service entry point of a built Bento (`service: deploy.bento_service:KilnService`).

A Bento ships Kiln's source, not an installed wheel: put `platform/` and `engines/` (beside
this file's folder) first on sys.path so the packaged `kiln` and `kiln_engines` are the ones
that run, then expose the service. From a checkout, `bentoml serve
kiln.serving.bento:KilnService` is the same service.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
for _sub in ("engines", "platform"):
    _path = str(_ROOT / _sub)
    if _path not in sys.path:
        sys.path.insert(0, _path)

from kiln.serving.bento import KilnService  # noqa: E402

__all__ = ["KilnService"]
