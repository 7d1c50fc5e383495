"""The regression parts of the evaluation report: errors by version and route, residuals,
RMSE over time, and the drift of predicted values."""

from __future__ import annotations

import html

from kiln.evaluate.drift import ValueDrift
from kiln.evaluate.page import fmt, image, series_plot, table
from kiln.evaluate.results import Evaluation, Regression


def _rmse_plot(report: Evaluation, regression: Regression) -> str:
    return series_plot(
        report,
        regression.error_over_time,
        "RMSE (labelled)",
        f"RMSE per {report.bucket}",
        (0, None),
    )


def regression_sections(report: Evaluation, regression: Regression) -> list[str]:
    """Errors by version and route, residuals per version, RMSE over time."""
    parts = [
        "<h2>Errors by version and route (regression)</h2>",
        table(
            ["version", "route", "requests", "answered", "labelled", "MAE", "RMSE", "coverage"],
            [
                [
                    e.version,
                    e.route,
                    e.requests,
                    e.answered,
                    e.labelled,
                    e.mae,
                    e.rmse,
                    e.label_coverage,
                ]
                for e in regression.errors
            ],
        ),
        image(_rmse_plot(report, regression), "RMSE over time"),
        "<h3>Residuals (predicted minus true) per version</h3>",
        table(
            [
                "version",
                "labelled",
                "MAE",
                "RMSE",
                "mean residual",
                "|residual| p50",
                "|residual| p90",
                "|residual| max",
                "RMSE at training",
            ],
            [
                [
                    v.version,
                    v.labelled,
                    v.mae,
                    v.rmse,
                    *(
                        (r.mean, r.abs_p50, r.abs_p90, r.abs_max)
                        if (r := v.residuals)
                        else [None] * 4
                    ),
                    v.reference_rmse,
                ]
                for v in regression.versions
            ],
        ),
    ]
    if regression.feedback_values_invalid:
        parts.append(
            f"<p>{regression.feedback_values_invalid} feedback value(s) that are no finite "
            "number left out.</p>"
        )
    return parts


def value_drift_paragraph(preds: ValueDrift) -> str:
    value = preds.value
    if value is None:
        return f"<p>Predicted values: {html.escape(preds.note or '')}</p>"
    return (
        f"<p>Predicted values ({preds.samples} samples): PSI {fmt(value.psi)}, KS "
        f"{fmt(value.ks_statistic)} (p {fmt(value.ks_pvalue)}), "
        f"<b>{'drift' if value.drift else 'stable'}</b>; mean {fmt(value.current_mean)} vs "
        f"{fmt(value.reference_mean)} on held-out data at training.</p>"
    )
