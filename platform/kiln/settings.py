"""Kiln's settings: read from `KILN_*` environment variables, passed explicitly to constructors.

Nothing in Kiln reads the environment elsewhere; a component takes a `Settings` (or the single
values it needs) as an argument, so tests and embedding applications can build their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide configuration. Every field can be set as `KILN_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    home: Path = Path(".kiln")
    """Where all state lives: registry, artifacts, runs, traffic, reports (KILN_HOME)."""

    registry_url: str | None = None
    """SQLAlchemy URL of the registry; default `sqlite:///$KILN_HOME/registry.db`."""

    threads: int = Field(default=0, ge=0)
    """CPU threads for training and inference; 0 means one per available core."""

    fashion_mnist_dir: Path = Path("/usr/share/datasets/fashion-mnist")
    """Directory holding Fashion-MNIST's gzipped idx files (Debian's dataset-fashion-mnist)."""

    debug: bool = False
    """Show tracebacks for errors in the CLI."""

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def resolved_registry_url(self) -> str:
        if self.registry_url:
            return self.registry_url
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"

    def thread_count(self) -> int:
        """The number of threads to use: the setting, or the cores this process may run on."""
        if self.threads:
            return self.threads
        import os

        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
