"""A logging process killed with SIGKILL leaves only complete, readable part files and loses at
most what it had not flushed; one stopped with SIGTERM writes every row it accepted.

The children are real processes; the test waits for a line they print when they are where the
test needs them (no sleeps), then signals them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl

from kiln.traffic import Window, run_query, scan_traffic
from kiln.traffic.layout import PART_GLOB, TEMP_SUFFIX

CHILD = r"""
import json, os, signal, sys, threading, time
from pathlib import Path
import numpy as np
from kiln.traffic import TrafficLogger, TrafficRecord, TrafficSettings, close_on_signals

home, mode = Path(sys.argv[1]), sys.argv[2]
x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
logits = np.arange(10, dtype=np.float32)[None]

def record(i):
    return TrafficRecord(f"r{i}", time.time_ns() // 1000, "digits", 1, 250, input=x, output=logits)

if mode == "kill-idle":
    # 300 rows flushed, then 120 more that stay in the buffer: SIGKILL loses exactly those.
    logger = TrafficLogger(home, TrafficSettings(flush_rows=10**6, flush_interval_s=3600))
    for i in range(300):
        logger.log(record(i))
    assert logger.flush(60)
    for i in range(300, 420):
        logger.log(record(i))
    print("ready", flush=True)
    signal.pause()
elif mode == "kill-busy":
    # Log as fast as possible with frequent flushes, so the kill lands amid a write.
    logger = TrafficLogger(home, TrafficSettings(flush_rows=300, flush_interval_s=0.01))
    i, announced = 0, False
    while True:
        logger.log(record(i))
        i += 1
        if not announced and logger.stats.files >= 5:
            print("ready", flush=True)
            announced = True
elif mode == "term":
    # A producer thread logs without pause; SIGTERM closes the logger mid-stream.
    logger = TrafficLogger(home, TrafficSettings(flush_rows=10**6, flush_interval_s=3600))
    accepted = 0
    enough = threading.Event()
    def produce():
        global accepted
        i = 0
        while True:
            if logger.log(record(i)):
                accepted += 1
                if accepted == 2000:
                    enough.set()
            i += 1
    def report():
        s = logger.stats
        (home / "report.json").write_text(json.dumps(
            {"accepted": accepted, "written": s.written, "dropped": s.dropped}))
    import atexit
    atexit.register(report)
    close_on_signals(logger)
    threading.Thread(target=produce, daemon=True).start()
    enough.wait()
    print("ready", flush=True)
    while True:
        signal.pause()
"""


def start(home: Path, mode: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # blocks until the child is where the test needs it
    assert line.strip() == "ready", child.stderr.read() if child.stderr else line
    return child


def stop(child: subprocess.Popen[str], sig: signal.Signals) -> int:
    child.send_signal(sig)
    return child.wait(timeout=60)


def read_rows(home: Path) -> pl.DataFrame:
    scan = scan_traffic(home, "digits", Window.last("1h"))
    assert scan.skipped == {}, scan.skipped

    def everything() -> pl.DataFrame:
        return scan.frame.collect()  # rebuilt on each call: without files found damaged

    return run_query(everything, scan)


def test_sigkill_loses_only_the_unflushed_buffer(tmp_path: Path) -> None:
    child = start(tmp_path, "kill-idle")
    assert stop(child, signal.SIGKILL) == -signal.SIGKILL
    rows = read_rows(tmp_path)
    assert rows.height == 300
    assert rows["request_id"].to_list() == [f"r{i}" for i in range(300)]


def test_sigkill_during_writes_leaves_only_complete_files(tmp_path: Path) -> None:
    child = start(tmp_path, "kill-busy")
    assert stop(child, signal.SIGKILL) == -signal.SIGKILL
    parts = sorted((tmp_path / "traffic").rglob(PART_GLOB))
    assert parts
    total = 0
    for part in parts:  # every visible file is complete and readable on its own
        frame = pl.read_parquet(part)
        assert frame["input"].list.len().unique().to_list() == [784]
        total += frame.height
    rows = read_rows(tmp_path)  # temporaries of the interrupted write, if any, are invisible
    assert rows.height == total
    assert rows["request_id"].n_unique() == total
    temporaries = list((tmp_path / "traffic").rglob(f"*{TEMP_SUFFIX}"))
    assert len(temporaries) <= 1  # at most the one write the kill interrupted


def test_sigterm_writes_every_accepted_row(tmp_path: Path) -> None:
    child = start(tmp_path, "term")
    code = stop(child, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, child.stderr.read() if child.stderr else code
    report = json.loads((tmp_path / "report.json").read_text())
    rows = read_rows(tmp_path)
    assert rows.height == report["accepted"] == report["written"]
    assert rows.height >= 2000
    assert report["dropped"] >= 0  # rows offered after close are refused and counted
