"""Two `kiln serve` replicas sharing one PostgreSQL registry and one S3 bucket (both real
servers the test run starts), as replicas behind a load balancer run.

Each replica has a home of its own (its own artifact cache and traffic outbox), as two hosts
would. Load from 16 clients spread over both for at least 10 s goes on through a promotion, a
rollback and a promotion again without one failed request; every answered request is a row in
the bucket; feedback sent to either replica joins traffic logged by the other; a canary's
routing is the same on both replicas.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import tritonclient.grpc as triton

import kiln.registry
from kiln.serving.launcher import ServeProcess, kiln_serve
from kiln.settings import Settings
from kiln.storage import open_storage
from tests.conftest import CliResult, wait_until
from tests.integration.grpc_harness import INPUT, ONE_THREAD, images, register
from tests.integration.load import BackgroundLoad

CLIENTS_PER_REPLICA = 8
LOAD_SECONDS = 10.0
CANARY_IDS = 200


@pytest.fixture
def registry_backend() -> str:
    """Replicas share a database server: this test runs on PostgreSQL only."""
    return "postgresql"


def _logged_ids() -> list[str]:
    """Every request id in the bucket's traffic part files of digits, read straight from the
    bucket with Polars (not through Kiln's readers: an independent count)."""
    storage = open_storage(Settings())
    assert storage is not None
    prefix = storage.location.key("traffic", "model=digits") + "/"
    urls = [
        f"s3://{storage.bucket}/{o.key}"
        for o in storage.objects(prefix)
        if o.key.rsplit("/", 1)[-1].startswith("part-")
    ]
    frame = pl.scan_parquet(urls, storage_options=storage.polars_options())
    return [str(i) for i in frame.select("request_id").collect()["request_id"]]


def _changes(seen: list[str]) -> list[str]:
    return [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]


def _version_for(replica: ServeProcess, request_id: str) -> str:
    x = images(1, seed=5)
    tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with triton.InferenceServerClient(replica.url) as client:
        return str(
            client.infer("digits", [tensor], request_id=request_id).get_response().model_version
        )


def test_two_replicas_share_the_registry_and_the_bucket(
    s3_home: Path, tmp_path: Path, cli: object
) -> None:
    run = cli  # type: ignore[assignment]
    with kiln.registry.open(settings=Settings()) as registry:
        register(registry, tmp_path / "models", "digits", seed=1)
        register(registry, tmp_path / "models", "digits", seed=2, alias=None)
    x = images(1, seed=3)
    serve = ("--models", "digits", "--poll-interval", "0.1")
    with contextlib.ExitStack() as stack:
        replicas = [
            stack.enter_context(kiln_serve(*serve, home=tmp_path / name, env=ONE_THREAD))
            for name in ("replica-a", "replica-b")
        ]
        registry = stack.enter_context(kiln.registry.open(settings=Settings()))
        loads = [
            stack.enter_context(
                BackgroundLoad(
                    replica.url, x, clients=CLIENTS_PER_REPLICA, request_ids=True, id_prefix=prefix
                )
            )
            for replica, prefix in zip(replicas, ("a", "b"), strict=True)
        ]
        started = time.monotonic()
        for load in loads:
            load.wait_until(lambda load=load: load.total() >= 100 and load.latest() == {"1"})
        steps = (
            lambda: registry.promote("digits:2", "production", gates=[], reason="replicas"),
            lambda: registry.rollback("digits", reason="replicas"),
            lambda: registry.promote("digits:2", "production", gates=[], reason="replicas again"),
        )
        for step, version in zip(steps, ("2", "1", "2"), strict=True):
            step()
            for load in loads:
                load.wait_until(lambda load=load, v=version: load.latest() == {v})
                at = load.total()
                load.wait_until(lambda load=load, at=at: load.total() >= at + 100)
        wait_until(lambda: time.monotonic() - started >= LOAD_SECONDS, timeout=60)
        for load in loads:
            load.stop.set()
            load.join()
        elapsed = time.monotonic() - started

        # A canary routes by request id: the same id gets the same version on every replica.
        registry.promote("digits:1", "candidate", gates=[], reason="canary")
        registry.set_rollout("digits", "canary", percent=30, reason="replicas")
        assert wait_until(
            lambda: all(any(_version_for(r, f"c{i}") == "1" for i in range(40)) for r in replicas),
            timeout=30,
        )
        routed = [[_version_for(r, f"c{i}") for i in range(CANARY_IDS)] for r in replicas]
        registry.set_rollout("digits", "off", reason="done")

        # Feedback for requests one replica answered, sent to the other one.
        sent_to = {}
        for replica, load, other in ((replicas[1], loads[0], "a"), (replicas[0], loads[1], "b")):
            ids = load.answered[:50]
            body = {"items": [{"request_id": i, "label": 3} for i in ids]}
            answer = httpx.post(f"http://{replica.http_url}/v2/models/digits/feedback", json=body)
            assert answer.status_code == 200 and answer.json()["accepted"] == 50, answer.text
            sent_to[other] = ids
    # Both replicas drained on SIGTERM, flushing their traffic to the bucket.

    assert elapsed >= LOAD_SECONDS
    for load in loads:
        assert load.errors == []
        for seen in load.versions:
            assert _changes(seen) == ["1", "2", "1", "2"]
    assert routed[0] == routed[1]
    assert 0.15 <= routed[0].count("1") / CANARY_IDS <= 0.45

    answered = sum(len(load.answered) for load in loads)
    stats: CliResult = run("traffic", "stats", "digits", "--since", "1h", "--json")
    assert stats.exit_code == 0, stats.stderr
    total = stats.json()["requests"]
    probes = total - answered
    assert probes >= 2 * CANARY_IDS  # the measured ids plus the waits for the rollout
    rows = _logged_ids()
    load_ids = {i for i in rows if i[0] in "ab"}
    assert load_ids == {i for load in loads for i in load.answered}
    assert len([i for i in rows if i[0] in "ab"]) == answered  # no row lost, none twice

    report: CliResult = run("evaluate", "digits", "--since", "1h", "--json")
    assert report.exit_code == 0, report.stderr
    evaluated = report.json()
    assert evaluated["labelled"] == 100 and evaluated["feedback"]["unmatched"] == 0
    assert evaluated["requests"] == total
