"""Kiln's settings: read from `KILN_*` environment variables, passed explicitly to constructors.

Nothing in Kiln reads the environment elsewhere; a component takes a `Settings` (or the single
values it needs) as an argument, so tests and embedding applications can build their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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

    storage_url: str | None = None
    """Where artifact blobs, traffic and feedback live: unset for files under KILN_HOME, or
    `s3://bucket/prefix` for an S3 bucket (KILN_STORAGE_URL; docs/user-guide/deployment.md)."""

    s3_endpoint_url: str | None = None
    """The S3 API's URL, for servers other than AWS (SeaweedFS, MinIO, Ceph): e.g.
    `http://127.0.0.1:8333`. Unset: AWS's endpoint for `s3_region`."""

    s3_region: str = "us-east-1"
    """The bucket's region (any value for servers that ignore regions)."""

    s3_access_key_id: SecretStr | None = None
    """The access key; unset: boto3's usual chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role)."""

    s3_secret_access_key: SecretStr | None = None
    """The secret key; never logged or printed."""

    s3_allow_http: bool | None = None
    """Allow plain HTTP to the endpoint; unset: true exactly when the endpoint URL is http://."""

    s3_connect_timeout_s: float = Field(default=5.0, gt=0)
    """Seconds to wait for a connection to the S3 endpoint before it counts as unreachable."""

    s3_read_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for bytes of an answer before the request counts as failed."""

    s3_max_attempts: int = Field(default=3, ge=1, le=20)
    """Attempts per S3 request (retries with backoff on throttling and network errors)."""

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
        return self.threads or usable_cores()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (`taskset`), lowered to a cgroup's
    CPU quota (a container's `--cpus`, a Kubernetes CPU limit) rounded up, at least 1."""
    import math
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores or 1, max(1, math.ceil(quota)))
    return max(1, cores or 1)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use per period; None when unlimited or unknown."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
