"""`kiln demo --task text --fast`: the text loop as a user runs it, checked on its figures.

Movie snippets (rotten-tomatoes) to product reviews (fine-foods), strings over stock
tritonclient, tokenised server-side. The fast run trains a quarter-size transformer for two
epochs and sends fewer requests; what it must show is the loop, not a leaderboard: the shift
costs accuracy, drift is detected, v2 (with a tokenizer of its own) is promoted through the
gates under load with no failed request, and recovers accuracy on reviews it never saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_kiln

pytestmark = pytest.mark.slow


def test_text_demo_fast_closes_the_loop(tmp_path: Path) -> None:
    result = run_kiln("demo", "--task", "text", "--fast", "--json",
                      env={"KILN_HOME": str(tmp_path / "home")}, timeout=1500)  # fmt: skip
    assert result.exit_code == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    accuracy = figures["accuracy"]
    assert figures["task"] == "text"
    assert figures["failed_requests"] == 0
    assert figures["swapped"] is True
    assert figures["drift_detected"] is True
    assert all(g["passed"] for g in figures["gates"])
    assert figures["v2"]["version"] == 2
    assert {"2"} == set(figures["served_versions_after"])
    # The shift is real, and retraining on the labelled reviews wins some of it back.
    assert accuracy["after_shift"] < accuracy["before_shift"]
    assert accuracy["after_retraining"] > accuracy["after_shift"]
    # A new version, a new tokenizer: trained on the new training set.
    assert figures["v2"]["tokenizer_sha256"] != figures["v1"]["tokenizer_sha256"]
    # Neither the movie test split nor the reviews sent after retraining were trained on.
    assert figures["heldout"]["in_training_data"] == 0
    assert figures["shifted_after"]["in_training_data"] == 0
    assert figures["v2"]["excluded_heldout"] > 0  # labelled test snippets were left out
    assert Path(figures["report"]).is_file()
