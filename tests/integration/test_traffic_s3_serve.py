"""`kiln serve` with KILN_STORAGE_URL set logs every answered request into the bucket (real
SeaweedFS, real server process, SIGTERM drain): nothing is left in the local outbox."""

from __future__ import annotations

import signal
from pathlib import Path

import polars as pl

import kiln.registry
from kiln.serving.launcher import kiln_serve
from kiln.settings import Settings
from kiln.traffic import log_store, scan_traffic
from tests.integration.grpc_harness import ONE_THREAD, images, register
from tests.integration.load import BackgroundLoad


def test_kiln_serve_logs_to_the_bucket(s3_home: Path, tmp_path: Path) -> None:
    with kiln.registry.open(settings=Settings()) as registry:
        register(registry, tmp_path, "digits", seed=1)
    x = images(1, seed=5)
    with kiln_serve("--models", "digits", home=s3_home, env=ONE_THREAD, metrics=False) as served:
        with BackgroundLoad(served.url, x, clients=2, request_ids=True, until_refused=True) as load:
            load.wait_until(lambda: load.total() >= 60, 120)
            served.process.send_signal(signal.SIGTERM)
            assert served.process.wait(60) == 0, served.output()[-3000:]
            load.join(60)
        answered = load.answered

    store = log_store(Settings())
    assert store.where().startswith("s3://kiln/")
    scan = scan_traffic(store, "digits")
    assert scan.files and all(str(f).startswith("s3://") for f in scan.files)
    rows = scan.frame.collect()
    assert set(answered) <= set(rows.filter(pl.col("status") == "ok")["request_id"])
    assert rows["request_id"].n_unique() == rows.height
    assert not list((s3_home / "outbox").rglob("part-*.parquet"))
    assert not (s3_home / "traffic").exists()
