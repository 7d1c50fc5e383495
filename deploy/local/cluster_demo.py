"""`just cluster-demo`: Kiln beyond one machine, on loopback.

Starts a real PostgreSQL (the shared registry) and a real S3 server (SeaweedFS: artifact blobs,
traffic and feedback), trains and compiles two versions of a digits classifier into them, runs
two `kiln serve` replicas with homes of their own (as two hosts would have), sends traffic to
both from 8 clients, promotes, rolls back, promotes again, and prints what each replica
answered and what the bucket logged. Everything is torn down at the end, also on Ctrl-C.

The PostgreSQL and SeaweedFS launchers are the ones the test suite uses (tests/postgres.py,
tests/seaweed.py): this recipe runs from a checkout, like the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from kiln.serving.launcher import ServeProcess, kiln_serve  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tests.seaweed import SeaweedServer  # noqa: E402

KILN = Path(sys.executable).with_name("kiln")
console = Console()
PHASE_S = 3.0
CLIENTS = 8


def kiln(*args: str, env: dict[str, str]) -> dict[str, object]:
    """Run a kiln command with `--json`; fail loudly with its message."""
    done = subprocess.run(
        [str(KILN), *args, "--json"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed:\n{done.stderr}")
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


class Traffic:
    """`CLIENTS` threads sending digits to the replicas in turn, counting answers by version."""

    def __init__(self, replicas: list[ServeProcess]) -> None:
        self.replicas = replicas
        self.answers: list[Counter[str]] = [Counter() for _ in replicas]
        self.failures = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        which = index % len(self.replicas)
        with triton.InferenceServerClient(self.replicas[which].url) as client:
            (spec,) = client.get_model_metadata("digits").inputs
            shape = [1 if d < 0 else d for d in spec.shape]
            x = np.random.default_rng(index).random(shape, dtype=np.float32)
            tensor = triton.InferInput(spec.name, shape, "FP32")
            tensor.set_data_from_numpy(x)
            while not self.stop.is_set():
                try:
                    answer = client.infer("digits", [tensor], client_timeout=30)
                    version = answer.get_response().model_version
                except Exception:
                    with self._lock:
                        self.failures += 1
                    continue
                with self._lock:
                    self.answers[which][version] += 1

    def snapshot(self) -> list[Counter[str]]:
        with self._lock:
            return [Counter(c) for c in self.answers]


def phase(traffic: Traffic, title: str) -> None:
    """Let the traffic run for a while and print what each replica answered meanwhile."""
    before = traffic.snapshot()
    time.sleep(PHASE_S)  # the demo's pacing, so a person can read along; nothing waits on it
    after = traffic.snapshot()
    table = Table(title=title)
    table.add_column("replica")
    table.add_column("answers", justify="right")
    table.add_column("by version")
    for i, (old, new) in enumerate(zip(before, after, strict=True)):
        delta = new - old
        table.add_row(
            "ab"[i],
            str(sum(delta.values())),
            ", ".join(f"v{k}: {v}" for k, v in sorted(delta.items())),
        )
    console.print(table)
    console.print(f"failed requests so far: {traffic.failures}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kiln-cluster-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        console.rule("starting PostgreSQL and SeaweedFS on 127.0.0.1")
        postgres = PostgresServer.start()
        stack.callback(postgres.stop)
        seaweed = SeaweedServer.start()
        stack.callback(seaweed.stop)
        registry_url = postgres.new_database()
        env = {
            **os.environ,
            **seaweed.env("cluster-demo"),
            "KILN_REGISTRY_URL": registry_url,
            "KILN_HOME": str(work / "trainer"),
            "KILN_THREADS": "1",
        }
        console.print(
            f"registry  {registry_url}\nstorage   {env['KILN_STORAGE_URL']} at {seaweed.endpoint}"
        )

        console.rule("training two versions (digits, MLP) and compiling them to ONNX")
        for seed in (1, 2):
            kiln("train", "--dataset", "digits", "--model", "mlp", "--epochs", "3",
                 "--seed", str(seed), "--name", "digits", "--compile", "onnxruntime",
                 "--no-progress", env=env)  # fmt: skip
        kiln("promote", "digits:1", env=env)

        console.rule("two replicas, each with a home of its own, sharing registry and bucket")
        serving = contextlib.ExitStack()
        stack.enter_context(serving)
        replicas = [
            serving.enter_context(
                kiln_serve(
                    "--models",
                    "digits",
                    "--poll-interval",
                    "0.2",
                    home=work / f"replica-{name}",
                    env=env,
                )
            )
            for name in "ab"
        ]
        for name, replica in zip("ab", replicas, strict=True):
            console.print(f"replica {name}: {replica.line}")

        with Traffic(replicas) as traffic:
            phase(traffic, "production = digits:1")
            # --force: the demo moves the alias whatever the gates say of two 3-epoch models
            kiln("promote", "digits:2", "--force", "--reason", "cluster demo", env=env)
            phase(traffic, "after kiln promote digits:2")
            kiln("rollback", "digits", "--reason", "cluster demo", env=env)
            phase(traffic, "after kiln rollback digits")
            kiln("promote", "digits:2", "--force", "--reason", "cluster demo, again", env=env)
            phase(traffic, "after kiln promote digits:2 again")
        answered = sum(sum(c.values()) for c in traffic.snapshot())  # every client has stopped
        failures = traffic.failures

        serving.close()  # SIGTERM: each replica drains and flushes its traffic to the bucket
        console.rule("what the bucket logged")
        stats = kiln("traffic", "stats", "digits", "--since", "1h", env=env)
        console.print(
            f"requests answered by the replicas: {answered}, failed: {failures}\n"
            f"rows in {env['KILN_STORAGE_URL']}/traffic: {stats['requests']}"
        )
        ok = failures == 0 and stats["requests"] == answered
        console.print("[green]every answer is logged, none failed[/]" if ok else "[red]mismatch[/]")
        console.rule("tearing down")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
