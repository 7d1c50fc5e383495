"""A real PostgreSQL server for the tests, started and stopped by the test run itself.

    server = PostgresServer.start()        # initdb + pg_ctl start on a free 127.0.0.1 port
    url = server.new_database()            # postgresql+psycopg://kiln@127.0.0.1:PORT/kiln_3
    server.stop()

The server runs from Debian's PostgreSQL binaries (`/usr/lib/postgresql/N/bin`, or `initdb` on
PATH) with fsync off: the tests check Kiln's semantics, not the disk's. `initdb` refuses to run
as root, so as root the cluster is created and run as the `postgres` user, in a directory under
/tmp that user can enter (pytest's own temporary directories are 0700). Each test gets a
database of its own (`CREATE DATABASE`, ~50 ms), so tests never see each other's registries.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 60


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl; None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    directory: Path
    port: int
    bin: Path
    as_user: tuple[str, ...]
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @staticmethod
    def available() -> bool:
        return binaries() is not None

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = binaries()
        if bin_dir is None:
            raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
        directory = Path(tempfile.mkdtemp(prefix="kiln-pg-", dir="/tmp"))
        as_user: tuple[str, ...] = ()
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres")
            as_user = ("runuser", "-u", "postgres", "--")
        data = directory / "data"
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "kiln", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, timeout=START_TIMEOUT_S,
        )  # fmt: skip
        port = _free_port()
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w",
             "-t", str(START_TIMEOUT_S), "-l", str(directory / "server.log"), "start"],
            check=True, capture_output=True, timeout=START_TIMEOUT_S + 10,
        )  # fmt: skip
        return cls(directory, port, bin_dir, as_user)

    @property
    def admin_url(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=kiln dbname=postgres"

    def new_database(self) -> str:
        """A new, empty database, as the SQLAlchemy URL Kiln takes (KILN_REGISTRY_URL)."""
        import psycopg

        name = f"kiln_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://kiln@127.0.0.1:{self.port}/{name}"

    def restart(self) -> None:
        """Stop the server (connections are cut, as in a real restart) and start it again."""
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"),
             "-m", "fast", "-w", "-l", str(self.directory / "server.log"), "restart"],
            check=True, capture_output=True, timeout=START_TIMEOUT_S + 10,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"),
             "-m", "immediate", "-w", "stop"],
            check=False, capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)
