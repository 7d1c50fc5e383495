"""NVIDIA's perf_analyzer, unmodified, over HTTP (`-i http`) against `kiln serve` as users run
it (skipped where perf_analyzer is not installed, as test_grpc_perf_analyzer.py's tests are).

perf_analyzer over HTTP reads the model's metadata and configuration as JSON (the `dims` must
be numbers) and sends its tensors with Triton's binary tensor extension. (The two-input model
of test_grpc_perf_analyzer.py is not run again over HTTP: registering it compiles with torch,
10 to 20 s on a 2-core host; the JSON config it reads is checked in test_http_server.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
import tritonclient.http as triton_http

from kiln.serving.launcher import kiln_serve
from kiln.traffic import scan_traffic
from tests.integration.grpc_harness import ONE_THREAD
from tests.integration.http_harness import digits_home
from tests.integration.test_grpc_perf_analyzer import (
    MEASURE,
    PERF_ANALYZER,
    measured,
    perf_analyzer,
)

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists(),
    reason=f"perf_analyzer is not installed at {PERF_ANALYZER} "
    "(../shared/tools/install-perf-analyzer .bench/perf_analyzer)",
)


def test_perf_analyzer_over_http_measures_kiln_serve(tmp_path: Path) -> None:
    home = digits_home(tmp_path)
    with kiln_serve("--models", "digits", home=home, env=ONE_THREAD) as served:
        code, output = perf_analyzer(
            served.http_url, "digits", 2, *MEASURE, "--input-data", "zero", protocol="http"
        )
        # Its default random bits hold NaN: refused with Kiln's message, the server unharmed.
        random_code, random_output = perf_analyzer(
            served.http_url, "digits", 1, "--measurement-interval", "300", "--max-trials", "1",
            protocol="http",
        )  # fmt: skip
        with triton_http.InferenceServerClient(served.http_url) as client:
            assert client.is_server_ready()
            stats = client.get_inference_statistics("digits")["model_stats"][0]
    measured(code, output)
    # Its server-side breakdown comes from Kiln's statistics, read over HTTP.
    assert re.search(r"Server:\s+Inference count: [1-9]", output)
    assert "compute infer" in output
    assert stats["inference_stats"]["success"]["count"] > 0
    assert random_code != 0
    assert "holds NaN or infinite values" in random_output
    # kiln serve logs traffic by default (written when it stopped): all of it came over HTTP.
    rows = scan_traffic(home, "digits").frame.collect()
    assert set(rows["transport"]) == {"http"}
    assert rows.filter(pl.col("status") == "ok").height > 0
    assert rows.filter(pl.col("status") == "invalid_argument").height > 0
