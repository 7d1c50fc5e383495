"""The demo's figures and page without running the demo (tests/e2e/test_demo.py runs it)."""

from __future__ import annotations

import json
from pathlib import Path

from kiln.compile import Speedup
from kiln.loop.demo_clients import Phase
from kiln.loop.demo_figures import (
    Accuracies,
    DemoFigures,
    FirstVersion,
    HeldOutFigures,
    LabelsImported,
    Retrained,
    ShiftedAfter,
)
from kiln.loop.demo_page import render_page
from kiln.registry import GateResult

PHASES = (
    Phase("mnist", {1: 200}, correct=196, total=200),
    Phase("shifted, before retraining", {1: 700}, correct=455, total=700),
    Phase("shifted, after", {2: 1100}, correct=1070, total=1100),
)
GATES = [
    GateResult("parity-passed", True, {}, "onnxruntime engine of digits:2 passed parity"),
    GateResult("held-out-regression", False, {"current": 0.98, "candidate": 0.9}, "a <b> & 'c'"),
]


def test_the_page_escapes_what_the_gates_say() -> None:
    page = render_page(
        PHASES, GATES, promoted=2, failed_requests=0, requests=2000, drift_detected=True
    )
    assert "<td>a &lt;b&gt; &amp; &#x27;c&#x27;</td>" in page
    assert "<b>" not in page.split("Promotion gates")[1]
    assert page.count("data:image/png;base64,") == 1
    assert 'href="demo-before-retraining.html"' in page


def test_figures_print_the_keys_kiln_demo_json_has_always_printed() -> None:
    figures = DemoFigures(
        home=Path("/k"),
        fast=True,
        v1=FirstVersion(1, 0.98, 1e-6, 1.0, Speedup(2.0, 3.0), 12.5),
        labels=LabelsImported(1500, 1500, 0),
        drift_detected=True,
        drifted_features=["ink_fraction"],
        v2=Retrained(2, 390, 160, 0.97),
        heldout=HeldOutFigures("mnist-5k", 500, 0.98, 0.97, 0, 160),
        shifted_after=ShiftedAfter(1100, 0),
        swapped=True,
        failed_requests=0,
        requests=2385,
        accuracy=Accuracies(0.98, 0.65, 0.97, 0.98, 0.97),
        served_versions_after={2: 1100},
        gates=GATES,
        report=Path("/k/reports/demo.html"),
        duration_s=300.0,
    )
    printed = json.loads(json.dumps(figures.to_dict()))
    assert list(printed) == [
        "home", "fast", "v1", "labels", "drift_detected", "drifted_features", "v2", "heldout",
        "shifted_after", "swapped", "failed_requests", "requests", "accuracy",
        "served_versions_after", "gates", "report", "duration_s",
    ]  # fmt: skip
    assert printed["v1"]["speedup_vs_eager"] == {"latency_batch1": 2.0, "throughput_max_batch": 3.0}
    assert printed["heldout"]["accuracy"] == {"v1": 0.98, "v2": 0.97}
    assert printed["served_versions_after"] == {"2": 1100}
    assert printed["gates"][1] == {
        "name": "held-out-regression", "passed": False, "message": "a <b> & 'c'",
    }  # fmt: skip
    assert list(printed["accuracy"]) == [
        "mnist_traffic_v1", "shifted_before_retraining", "shifted_after_retraining",
        "mnist_heldout_v1", "mnist_heldout_after_retraining",
    ]  # fmt: skip
    untimed = FirstVersion(1, 0.98, None, None, None, 12.5).to_dict()
    assert untimed["speedup_vs_eager"] == {}
