"""`kiln traffic stats` and `kiln evaluate` through the real CLI, with the reference profile
read from the registry the way `kiln train --name` stores it."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.registry
from kiln.data.profile import reference_profile
from kiln.settings import Settings
from kiln.traffic import TrafficLogger, TrafficRecord, TrafficSettings

CLASSES = ["dark", "light"]


def images(n: int, seed: int, brightness: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(brightness, 0.15, (n, 1, 8, 8)), 0, 1).astype(np.float32)


def classify(x: np.ndarray) -> np.ndarray:
    mean = x.reshape(len(x), -1).mean(axis=1)
    return np.stack([0.5 - mean, mean - 0.5], axis=1).astype(np.float32) * 10


def prepare(home: Path, tmp_path: Path, *brightness: float) -> None:
    """Version 1 trained on images of brightness 0.3 and 0.7 (half each); 300 requests with
    `brightness` (an equal share each)."""
    train = np.concatenate([images(500, 1, 0.3), images(500, 2, 0.7)])
    held_out = np.concatenate([images(100, 3, 0.3), images(100, 4, 0.7)])
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    config = {
        "class_names": CLASSES,
        "reference": reference_profile(train, [1, 8, 8], classify(held_out)),
    }
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        registry.register_version("shades", checkpoint=checkpoint, config=config, metrics={})
    x = np.concatenate([images(300 // len(brightness), 5, b) for b in brightness])
    ts = int((datetime.now(UTC) - timedelta(minutes=20)).timestamp() * 1e6)
    with TrafficLogger(home, TrafficSettings(flush_interval_s=60)) as logger:
        for i, (xi, si) in enumerate(zip(x, classify(x), strict=True)):
            logger.log(
                TrafficRecord(
                    f"r{i}", ts + 1000 * i, "shades", 1, 300 + i, input=xi[None], output=si[None]
                )
            )
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"r{i},{i % 2}\n" for i in range(100)))


def test_traffic_stats_json(cli: Any, kiln_home: Path, tmp_path: Path) -> None:
    prepare(kiln_home, tmp_path, 0.5)
    result = cli("traffic", "stats", "shades", "--since", "1h", "--json")
    assert result.exit_code == 0, result.stderr
    stats = result.json()
    assert stats["requests"] == 300 and stats["error_rate"] == 0
    (group,) = stats["by_version_route"]
    assert group["latency_p50_us"] == pytest.approx(449, rel=0.005)  # 150th of 300..599
    human = cli("traffic", "stats", "shades")
    assert human.exit_code == 0 and "300 requests" in human.stdout


def test_evaluate_flags_drift_and_writes_a_report(
    cli: Any, kiln_home: Path, tmp_path: Path
) -> None:
    prepare(kiln_home, tmp_path, 0.95)  # far brighter than anything seen in training
    imported = cli("feedback", "import", str(tmp_path / "labels.csv"), "--json")
    assert imported.exit_code == 0 and imported.json()["matched"] == 100
    page = tmp_path / "report.html"
    result = cli("evaluate", "shades", "--json", "--report", str(page))
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["labelled"] == 100 and report["label_coverage"] == 100 / 300
    (drift,) = report["drift"]["versions"]
    assert drift["drift"] is True
    assert {"mean_intensity", "ink_fraction"} <= set(drift["inputs"]["drifted"])
    assert drift["predictions"]["moved_classes"] == ["dark", "light"]
    html = page.read_text()
    images_in_page = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images_in_page) == 3  # accuracy, drift per feature, latency
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images_in_page)
    human = cli("evaluate", "shades")
    assert "DRIFT" in human.stdout and "mean_intensity" in human.stdout


def test_evaluate_without_drift(cli: Any, kiln_home: Path, tmp_path: Path) -> None:
    prepare(kiln_home, tmp_path, 0.3, 0.7)  # what it was trained on
    report = cli("evaluate", "shades", "--json", "--psi-threshold", "0.25").json()
    (drift,) = report["drift"]["versions"]
    assert drift["inputs"]["drifted"] == [] and drift["drift"] is False
    assert report["drift"]["thresholds"]["psi"] == 0.25


def test_unknown_model_exits_2_with_a_hint(cli: Any, kiln_home: Path) -> None:
    result = cli("traffic", "stats", "nothing")
    assert result.exit_code == 2
    assert "no traffic logged for model 'nothing'" in result.stderr
    result = cli("evaluate", "nothing", "--since", "soon")
    assert result.exit_code == 2 and "24h, 30m, 7d" in result.stderr
