"""The BentoML transport: `bentoml serve kiln.serving.bento:KilnService`.

The only package in Kiln that imports bentoml. Importing it builds the service, reading its
settings from the environment (see `kiln.serving.bento.service`).
"""

from __future__ import annotations

from kiln.serving.bento.service import KilnService

__all__ = ["KilnService"]
