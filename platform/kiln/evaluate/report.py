"""The evaluation as one self-contained HTML page: tables plus PNG plots embedded as base64
(accuracy or RMSE over time, drift per feature, latency over time). Needs matplotlib."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.evaluate.drift import CategoricalDrift, DriftThresholds, FeatureDrift, ValueDrift
from kiln.evaluate.page import (
    fmt,
    image,
    page,
    png,
    series_plot,
    table,
    time_axis,
    write_page,
)
from kiln.evaluate.regression_report import regression_sections, value_drift_paragraph
from kiln.evaluate.results import Confusion, Evaluation, SkippedRows, VersionDrift
from kiln.evaluate.text_report import text_sections

__all__ = ["image", "page", "png", "render_html", "table", "write_page", "write_report"]


def _by_version(
    points: Sequence[Mapping[str, Any]], key: str
) -> dict[Any, tuple[list[Any], list[Any]]]:
    series: dict[Any, tuple[list[Any], list[Any]]] = {}
    for p in points:
        xs, ys = series.setdefault(p["version"], ([], []))
        xs.append(p["start"])
        ys.append(p[key])
    return series


def _accuracy_plot(report: Evaluation) -> str:
    return series_plot(
        report,
        report.accuracy_over_time,
        "accuracy (labelled)",
        f"accuracy per {report.bucket}",
        (0, 1.02),
    )


def _drift_plot(version: VersionDrift, threshold: float) -> str:
    features = version.inputs.features if version.inputs else []

    def draw(ax: Any) -> None:
        names = [f.name for f in features]
        values = [f.psi for f in features]
        colors = ["#c0392b" if f.drift else "#2c7fb8" for f in features]
        ax.barh(names, values, color=colors)
        ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold}")
        ax.invert_yaxis()
        ax.set_xlabel("PSI vs reference")
        ax.set_title(f"input drift per feature, version {version.version}")
        ax.legend(loc="lower right")

    return png(draw, height=max(3.0, 0.22 * len(features) + 1.0))


def _latency_plot(report: Evaluation) -> str:
    def draw(ax: Any) -> None:
        points = report.latency_over_time
        for key, style in (("latency_p50_us", "-"), ("latency_p99_us", "--")):
            for version, (xs, ys) in _by_version(points, key).items():
                if version is None:
                    continue
                ms = [None if y is None else y / 1000 for y in ys]
                ax.plot(xs, ms, style, marker=".", label=f"v{version} {key[8:11]}")
        time_axis(ax, report)
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"latency per {report.bucket} (answered requests)")
        ax.grid(alpha=0.3)
        if points:
            ax.legend()

    return png(draw)


def render_html(report: Evaluation) -> str:
    """The page for an `evaluate_traffic` result."""
    title = f"Kiln evaluation: {report.model}"
    verdict = (
        '<span class="drift">drift detected</span>'
        if report.drift_detected
        else '<span class="ok">no drift detected</span>'
    )
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{fmt(report.since)} to {fmt(report.until)} UTC: {report.requests} "
        f"requests, {report.answered} answered, {report.labelled} labelled "
        f"(coverage {fmt(report.label_coverage, 3)}); "
        f"{report.feedback.unmatched} unmatched feedback {report.feedback_items}; {verdict}.</p>",
    ]
    if report.regression is None or report.accuracy:
        parts += _accuracy_sections(report)
    if report.regression is not None:
        parts += regression_sections(report, report.regression)
    for v in report.versions:
        parts += [
            f"<h2>Version {v.version}: {v.labelled} labelled, accuracy "
            f"{fmt(v.accuracy)}, ECE {fmt(v.calibration.ece)}</h2>",
            "<h3>Per class</h3>",
            table(
                ["class", "name", "labelled", "accuracy"],
                [[c.index, c.name, c.labelled, c.accuracy] for c in v.per_class],
            ),
            *_confusion(v.confusion),
        ]
    threshold = report.drift.thresholds.psi
    parts.append(f"<h2>Drift (PSI threshold {threshold})</h2>")
    for d in report.drift.versions:
        parts += _drift_section(d, report.drift.thresholds)
    parts += [
        "<h2>Latency</h2>",
        table(
            ["version", "route", "requests", "errors", "p50 (µs)", "p95 (µs)", "p99 (µs)"],
            [
                [
                    r["version"],
                    r["route"],
                    r["requests"],
                    r["errors"],
                    r["latency_p50_us"],
                    r["latency_p95_us"],
                    r["latency_p99_us"],
                ]
                for r in report.latency
            ],
        ),
        image(_latency_plot(report), "latency over time"),
    ]
    skipped = _skipped_rows(report.skipped_rows)
    if skipped:
        parts.append("<h2>Skipped rows</h2>")
        parts.append(table(["rows", "why"], skipped))
    if report.skipped_files:
        parts.append("<h2>Skipped files</h2>")
        parts.append(table(["file", "why"], list(report.skipped_files.items())))
    return page(title, parts)


def _accuracy_sections(report: Evaluation) -> list[str]:
    return [
        "<h2>Accuracy by version and route</h2>",
        table(
            ["version", "route", "requests", "answered", "labelled", "accuracy", "coverage"],
            [
                [
                    a.version,
                    a.route,
                    a.requests,
                    a.answered,
                    a.labelled,
                    a.accuracy,
                    a.label_coverage,
                ]
                for a in report.accuracy
            ],
        ),
        image(_accuracy_plot(report), "accuracy over time"),
    ]


def _drift_section(d: VersionDrift, thresholds: DriftThresholds) -> list[str]:
    threshold = thresholds.psi
    parts = [f"<h3>Version {d.version}</h3>"]
    inputs, preds = d.inputs, d.predictions
    if (inputs is None and d.text is None) or preds is None:
        return [*parts, f"<p>{html.escape(d.note or '')}</p>"]
    if d.text is not None:
        parts += text_sections(d.text, d.version, thresholds)
    elif inputs is not None and inputs.judged:
        moved = ", ".join(inputs.drifted) or "none"
        parts += [
            f"<p>{inputs.samples} input samples; features that moved: "
            f"<b>{html.escape(moved)}</b></p>",
            image(_drift_plot(d, threshold), "drift per feature"),
            table(
                ["feature", "PSI", "KS", "KS p-value", "reference mean", "current mean", "drift"],
                [
                    [
                        f.name,
                        f.psi,
                        f.ks_statistic,
                        f.ks_pvalue,
                        f.reference_mean,
                        f.current_mean,
                        f.drift,
                    ]
                    for f in inputs.features
                ],
                flag=6,
            ),
            *_categories(inputs.features),
        ]
    elif inputs is not None:
        parts.append(f"<p>Inputs: {html.escape(inputs.note or '')}</p>")
    if isinstance(preds, ValueDrift):
        return [*parts, value_drift_paragraph(preds)]
    if preds.judged and preds.confidence is not None:
        conf = preds.confidence
        parts += [
            f"<p>Predicted classes: PSI {fmt(preds.psi)} "
            f"({'drift' if preds.drift else 'stable'}); classes that moved: "
            f"<b>{html.escape(', '.join(preds.moved_classes) or 'none')}</b>. "
            f"Confidence: PSI {fmt(conf.psi)}, KS {fmt(conf.ks_statistic)} "
            f"(p {fmt(conf.ks_pvalue)}), mean {fmt(conf.current_mean)} vs "
            f"{fmt(conf.reference_mean)} at training.</p>",
            table(
                ["class", "name", "reference share", "current share", "PSI term", "moved"],
                [
                    [c.index, c.name, c.reference, c.current, c.contribution, c.moved]
                    for c in preds.classes
                ],
                flag=5,
            ),
        ]
    else:
        parts.append(f"<p>Predictions: {html.escape(preds.note or '')}</p>")
    return parts


CATEGORY_ROWS = 5
"""Categories listed per categorical feature on the page, largest PSI term first (the JSON
has them all)."""


def _categories(features: Sequence[FeatureDrift]) -> list[str]:
    """The category shares of the categorical features (nothing when there are none)."""
    categorical = [f for f in features if isinstance(f, CategoricalDrift)]
    if not categorical:
        return []
    rows = [
        [label, c.name, c.reference, c.current, c.contribution, c.z, c.moved]
        for f in categorical
        for label in [f"{f.name} (total variation {fmt(f.total_variation)})"]
        for c in f.categories[:CATEGORY_ROWS]
    ]
    return [
        "<p>Categorical features, compared by category shares (their PSI above is over the "
        f"categories; 'other' is values the training data never had); the {CATEGORY_ROWS} "
        "largest PSI terms of each:</p>",
        table(
            ["feature", "category", "reference share", "current share", "PSI term", "z", "moved"],
            rows,
            flag=6,
        ),
    ]


MAX_CELLS = 500
"""Non-zero confusion cells listed at most on the page (the JSON has them all)."""


def _confusion(confusion: Confusion) -> list[str]:
    if confusion.matrix is not None:
        classes = confusion.classes or []
        return [
            "<h3>Confusion matrix (rows: truth, columns: prediction)</h3>",
            table(
                ["", *classes],
                [[name, *row] for name, row in zip(classes, confusion.matrix, strict=True)],
            ),
        ]
    cells = sorted(confusion.cells or [], key=lambda c: -c[2])
    return [
        f"<h3>Confusion: the {min(len(cells), MAX_CELLS)} largest non-zero cells of "
        f"{len(cells)} ({html.escape(confusion.note or '')})</h3>",
        table(["truth", "prediction", "count"], cells[:MAX_CELLS]),
    ]


def _skipped_rows(skipped: SkippedRows) -> list[list[Any]]:
    """The skipped-row counts of a report as table rows (count, why), non-zero ones only."""
    why = [
        (skipped.labels_out_of_range, "label outside the version's classes"),
        (skipped.predictions_out_of_range, "prediction outside the version's classes"),
        (skipped.feedback_labels_invalid, "feedback label that is no class index"),
        (skipped.predictions_for_drift, "prediction left out of prediction drift"),
    ]
    rows: list[list[Any]] = [[n, text] for n, text in why if n]
    rows += [
        [n, f"logged input unusable for drift: {reason}"]
        for reason, n in sorted(skipped.inputs.items())
    ]
    return rows


def write_report(report: Evaluation, path: Path) -> Path:
    """Write `render_html(report)` to `path` (atomically) and return it."""
    return write_page(render_html(report), path)
