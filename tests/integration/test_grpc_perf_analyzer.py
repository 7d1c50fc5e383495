"""NVIDIA's perf_analyzer, unmodified, against a real server (skipped where it is not installed:
`../shared/tools/install-perf-analyzer .bench/perf_analyzer`).

perf_analyzer's default input data is random bits, which for a float tensor include NaN and
infinities; `kiln serve` refuses those unless `--allow-nonfinite`, so the measurement runs with
`--input-data zero` (what docs/user-guide/serving.md tells users) and the default is checked to
fail with Kiln's message, not a crash."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import register, running_server
from tests.unit import sources_models

PERF_ANALYZER = Path(__file__).resolve().parents[2] / ".bench" / "perf_analyzer" / "perf_analyzer"

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists(),
    reason=f"perf_analyzer is not installed at {PERF_ANALYZER} "
    "(../shared/tools/install-perf-analyzer .bench/perf_analyzer)",
)


def test_perf_analyzer_measures_kiln_serve(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with running_server(home, models=("digits",)) as server:
        result = subprocess.run(
            [str(PERF_ANALYZER), "-m", "digits", "-i", "grpc", "-u", server.url,
             "--concurrency-range", "2:2", "--measurement-interval", "500",
             "--stability-percentage", "100", "--input-data", "zero"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        with server.client() as client:
            served = client.get_inference_statistics("digits").model_stats[0]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", result.stdout)
    assert throughput and float(throughput.group(1)) > 0
    # Its server-side breakdown comes from Kiln's ModelStatistics.
    assert re.search(r"Server:\s+Inference count: [1-9]", result.stdout)
    assert "compute infer" in result.stdout
    assert served.inference_stats.success.count > 0


def test_perf_analyzer_random_bits_get_kilns_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with running_server(home, models=("digits",)) as server:
        result = subprocess.run(
            [str(PERF_ANALYZER), "-m", "digits", "-i", "grpc", "-u", server.url,
             "--concurrency-range", "1:1", "--measurement-interval", "300",
             "--max-trials", "1"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        with server.client() as client:
            assert client.is_server_ready()
    assert result.returncode != 0
    assert "holds NaN or infinite values" in result.stdout + result.stderr


def test_perf_analyzer_drives_a_two_input_model(cli: Any, tmp_path: Path, settings: Any) -> None:
    """A model Kiln did not train, with an FP32 and an INT64 input and two outputs
    (`kiln register --module`): perf_analyzer reads both inputs from ModelMetadata and
    ModelConfig and sends them together; the server batches them."""
    weights = tmp_path / "two_tower.safetensors"
    save_file(sources_models.two_tower().state_dict(), str(weights))
    registered = cli(
        "register", "tower", "--module", "tests.unit.sources_models:two_tower",
        "--weights", str(weights), "--input", "features:FP32:-1,10", "--input", "ids:INT64:-1,4",
        "--task", "regression", "--output", "score", "--output", "pooled", "--max-batch", "16",
    )  # fmt: skip
    assert registered.exit_code == 0, registered.stderr
    compiled = cli("compile", "tower:1", "--parity-samples", "64")
    assert compiled.exit_code == 0, compiled.stderr
    with kiln.registry.open(settings=settings) as registry:
        registry.promote("tower:1", gates=[], reason="test")
    with running_server(settings.home, models=("tower",)) as server:
        result = subprocess.run(
            [str(PERF_ANALYZER), "-m", "tower", "-i", "grpc", "-u", server.url,
             "--concurrency-range", "4:4", "--measurement-interval", "500",
             "--stability-percentage", "100", "--input-data", "zero"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        with server.client() as client:
            served = client.get_inference_statistics("tower").model_stats[0]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", result.stdout)
    assert throughput and float(throughput.group(1)) > 0
    assert served.inference_stats.success.count > 0
