"""The demo's HTML page: served accuracy per phase with the promotion marked, the phases and
the promotion gates, in the evaluation report's style (`kiln.evaluate.report`), linking to the
evaluation written before retraining."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from kiln.evaluate.report import image, page, png, table
from kiln.loop.demo_clients import Phase
from kiln.registry import GateResult

PAGE = "demo.html"
"""The demo's page, under KILN_HOME/reports."""
BEFORE_RETRAINING = "demo-before-retraining.html"
"""The evaluation report the demo writes before retraining, beside its page."""


def _phase_plot(phases: Sequence[Phase], promoted: int) -> str:
    def draw(ax: Any) -> None:
        bars = ax.bar(
            [p.name for p in phases], [p.accuracy for p in phases],
            color=["#4c72b0", "#c44e52", "#55a868"],
        )  # fmt: skip
        ax.axvline(1.5, color="black", linestyle="--")
        ax.text(1.52, 0.05, f"v{promoted} promoted", rotation=90)
        ax.bar_label(bars, fmt="%.3f")
        ax.set(ylim=(0, 1.05), ylabel="accuracy", title="served accuracy by phase")

    return png(draw, width=8, height=3.5)


def render_page(
    phases: Sequence[Phase],
    gates: Sequence[GateResult],
    *,
    promoted: int,
    failed_requests: int,
    requests: int,
    drift_detected: bool,
    title: str = "kiln demo",
    before_retraining: str = BEFORE_RETRAINING,
) -> str:
    """The page for one demo run; `promoted` is the version promoted after the second phase,
    `before_retraining` the evaluation report written then (a file beside the page)."""
    return page(
        title,
        [
            f"<h1>{html.escape(title)}</h1>",
            f"<p>Failed requests: <b>{failed_requests}</b> of {requests}. Drift detected before "
            f"retraining: <b>{drift_detected}</b>. Evaluation before retraining: "
            f'<a href="{html.escape(before_retraining)}">report</a>.</p>',
            image(_phase_plot(phases, promoted), "accuracy by phase"),
            "<h2>Phases</h2>",
            table(
                ["phase", "requests", "accuracy", "versions that answered"],
                [[p.name, p.total, f"{p.accuracy:.3f}", p.version_counts] for p in phases],
            ),
            "<h2>Promotion gates</h2>",
            # Cells are escaped: a gate's message quotes what it judged (names, reasons).
            table(
                ["gate", "result", "detail"],
                [[g.gate, "pass" if g.passed else "FAIL", g.message] for g in gates],
            ),
        ],
    )
