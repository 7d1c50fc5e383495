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

import kiln.registry
from kiln.settings import Settings
from tests.integration.grpc_harness import register, running_server
from tests.integration.two_tower import register_two_tower

PERF_ANALYZER = Path(__file__).resolve().parents[2] / ".bench" / "perf_analyzer" / "perf_analyzer"

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists(),
    reason=f"perf_analyzer is not installed at {PERF_ANALYZER} "
    "(../shared/tools/install-perf-analyzer .bench/perf_analyzer)",
)


def perf_analyzer(
    url: str, model: str, concurrency: int, *extra: str, protocol: str = "grpc"
) -> tuple[int, str]:
    """Run perf_analyzer over `protocol` (grpc or http) at one concurrency; its exit code and
    output."""
    result = subprocess.run(
        [str(PERF_ANALYZER), "-m", model, "-i", protocol, "-u", url,
         "--concurrency-range", f"{concurrency}:{concurrency}", *extra],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


MEASURE = ("--measurement-interval", "500", "--stability-percentage", "100")


def measured(code: int, output: str) -> None:
    assert code == 0, output[-4000:]
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    assert throughput and float(throughput.group(1)) > 0


def test_perf_analyzer_measures_kiln_serve(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with running_server(home, models=("digits",)) as server:
        code, output = perf_analyzer(server.url, "digits", 2, *MEASURE, "--input-data", "zero")
        with server.client() as client:
            served = client.get_inference_statistics("digits").model_stats[0]
    measured(code, output)
    # Its server-side breakdown comes from Kiln's ModelStatistics.
    assert re.search(r"Server:\s+Inference count: [1-9]", output)
    assert "compute infer" in output
    assert served.inference_stats.success.count > 0


def test_perf_analyzer_random_bits_get_kilns_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with running_server(home, models=("digits",)) as server:
        code, output = perf_analyzer(
            server.url, "digits", 1, "--measurement-interval", "300", "--max-trials", "1"
        )
        with server.client() as client:
            assert client.is_server_ready()
    assert code != 0
    assert "holds NaN or infinite values" in output


def test_perf_analyzer_drives_a_two_input_model(cli: Any, tmp_path: Path, settings: Any) -> None:
    """A model Kiln did not train, with an FP32 and an INT64 input and two outputs
    (`kiln register --module`): perf_analyzer reads both inputs from ModelMetadata and
    ModelConfig and sends them together; the server batches them."""
    register_two_tower(cli, tmp_path, settings)
    with running_server(settings.home, models=("tower",)) as server:
        code, output = perf_analyzer(server.url, "tower", 4, *MEASURE, "--input-data", "zero")
        with server.client() as client:
            served = client.get_inference_statistics("tower").model_stats[0]
    measured(code, output)
    assert served.inference_stats.success.count > 0
