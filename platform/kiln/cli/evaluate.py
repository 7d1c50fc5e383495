"""`kiln evaluate NAME`: accuracy and calibration (classifiers) or MAE, RMSE and residuals
(regressors), and drift, of a model on its production traffic."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.models import model_name
from kiln.cli.output import JsonOption, emit, err_console
from kiln.cli.traffic import SinceOption
from kiln.settings import Settings

if TYPE_CHECKING:  # the CLI starts without importing polars and numpy (kiln.evaluate does)
    from kiln.evaluate import Evaluation
    from kiln.evaluate.drift import PredictionDrift, ValueDrift


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def evaluate(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Model name.")],
    since: Annotated[str, SinceOption] = "24h",
    report: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML report here.")
    ] = None,
    psi_threshold: Annotated[
        float, typer.Option(help="PSI above which a feature or the class mix counts as drift.")
    ] = 0.2,
    ks_alpha: Annotated[float, typer.Option(help="KS p-value below which to flag.")] = 0.01,
    sample: Annotated[
        int, typer.Option(help="Logged inputs examined for drift at most (hash-sampled).")
    ] = 50_000,
    as_json: bool = JsonOption,
) -> None:
    """Evaluate served versions on labelled traffic and measure drift against training.

    Classification versions are judged by accuracy on feedback labels, regression versions
    by MAE and RMSE on feedback values (with their residuals and the drift of their
    predicted values).
    """
    import kiln.registry
    from kiln.evaluate import DriftThresholds, evaluate_traffic, version_infos, write_report
    from kiln.traffic import Window, log_store

    name = model_name(name, "kiln evaluate")
    settings = Settings()
    with kiln.registry.open(settings=settings) as registry:
        versions = version_infos(registry, name)
    result = evaluate_traffic(
        log_store(settings),
        name,
        Window.last(since),
        versions,
        thresholds=DriftThresholds(psi=psi_threshold, ks_alpha=ks_alpha),
        sample_size=sample,
    )
    payload = result.to_dict()
    if report is not None:
        payload["report"] = str(write_report(result, report))
        err_console.print(f"report: {payload['report']}")

    def render(console: Console) -> None:
        console.print(
            f"[bold]{name}[/] since {result.since:%Y-%m-%d %H:%M:%S} UTC: "
            f"{result.requests} requests, {result.labelled} labelled "
            f"(coverage {_num(result.label_coverage, 3)}), "
            f"{result.feedback.unmatched} unmatched {result.feedback_items}"
        )
        if result.regression is None or result.accuracy:
            table = Table(title="accuracy on labelled traffic")
            for col in ("version", "route", "requests", "labelled", "accuracy", "coverage"):
                table.add_column(col, justify="right")
            for a in result.accuracy:
                table.add_row(
                    "-" if a.version is None else str(a.version), a.route,
                    str(a.requests), str(a.labelled),
                    _num(a.accuracy), _num(a.label_coverage, 3),
                )  # fmt: skip
            console.print(table)
        if result.regression is not None:
            render_regression(console, result)
        for v in result.versions:
            worst = [c for c in v.per_class if c.accuracy is not None]
            worst.sort(key=lambda c: c.accuracy or 0.0)
            console.print(
                f"version {v.version}: accuracy {_num(v.accuracy)}, "
                f"ECE {_num(v.calibration.ece)}"
                + (f", hardest class '{worst[0].name}' at {worst[0].accuracy:.3f}" if worst else "")
            )
        render_drift(console, result)
        for line in skipped_lines(result):
            console.print(line, highlight=False)

    emit(payload, as_json, render)


def render_drift(console: Console, result: Evaluation) -> None:
    """Each served version's drift: inputs (a text version: its texts), then class mix and
    confidence or values."""
    for d in result.drift.versions:
        inputs, preds = d.inputs, d.predictions
        if (inputs is None and d.text is None) or preds is None:
            console.print(f"version {d.version}: {d.note}")
            continue
        verdict = "[bold red]DRIFT[/]" if d.drift else "[green]stable[/]"
        console.print(f"version {d.version} drift: {verdict}")
        if d.text is not None:
            from kiln.evaluate.text_report import text_drift_lines

            for line in text_drift_lines(d.text):
                console.print(f"  {line}", highlight=False)
        elif inputs is not None and inputs.judged:
            top = sorted(inputs.features, key=lambda f: -f.psi)[:5]
            console.print(
                f"  inputs ({inputs.samples} samples): moved "
                f"{', '.join(inputs.drifted) or 'none'}; largest PSI "
                + ", ".join(f"{f.name} {f.psi:.3f}" for f in top)
            )
        elif inputs is not None:
            console.print(f"  inputs: {inputs.note}")
        console.print(f"  predictions: {prediction_line(preds)}")


def prediction_line(preds: PredictionDrift | ValueDrift) -> str:
    """One line on a version's prediction drift (class mix and confidence, or values)."""
    from kiln.evaluate.drift import ValueDrift

    if isinstance(preds, ValueDrift):
        return value_drift_line(preds)
    if preds.judged and preds.confidence is not None:
        return (
            f"class mix PSI {_num(preds.psi, 3)}, moved "
            f"{', '.join(preds.moved_classes) or 'none'}; confidence PSI "
            f"{preds.confidence.psi:.3f}, mean "
            f"{_num(preds.confidence.current_mean, 3)} vs "
            f"{_num(preds.confidence.reference_mean, 3)} at training"
        )
    return str(preds.note)


def render_regression(console: Console, result: Evaluation) -> None:
    """The regression versions' errors: a table per version and route, a line per version."""
    regression = result.regression
    if regression is None:
        return
    table = Table(title="errors on labelled traffic (regression)")
    for col in ("version", "route", "requests", "labelled", "MAE", "RMSE", "coverage"):
        table.add_column(col, justify="right")
    for e in regression.errors:
        table.add_row(
            "-" if e.version is None else str(e.version), e.route,
            str(e.requests), str(e.labelled),
            _num(e.mae), _num(e.rmse), _num(e.label_coverage, 3),
        )  # fmt: skip
    console.print(table)
    for v in regression.versions:
        r = v.residuals
        residuals = (
            f", mean residual {r.mean:+.4f}, |residual| p50 {r.abs_p50:.4f} p90 {r.abs_p90:.4f}"
            if r
            else ""
        )
        training = f" (RMSE at training {v.reference_rmse:.4f})" if v.reference_rmse else ""
        console.print(
            f"version {v.version}: RMSE {_num(v.rmse)}, MAE {_num(v.mae)}{residuals}{training}"
        )


def value_drift_line(drift: ValueDrift) -> str:
    value = drift.value
    if value is None:
        return str(drift.note)
    return (
        f"values PSI {value.psi:.3f}, KS {value.ks_statistic:.3f} "
        f"({'drift' if value.drift else 'stable'}), mean {_num(value.current_mean, 3)} vs "
        f"{_num(value.reference_mean, 3)} at training"
    )


def skipped_lines(result: Evaluation) -> list[str]:
    """What a person should know was left out: rows that could not be used, unreadable
    files (each is also warned about, by name, on stderr)."""
    rows = result.skipped_rows
    what = [
        (rows.labels_out_of_range, "label(s) outside the model's classes"),
        (rows.predictions_out_of_range, "prediction(s) outside the model's classes"),
        (
            rows.feedback_labels_invalid,
            "feedback label(s) that are no class index (negative or beyond any model's)",
        ),
        (rows.predictions_for_drift, "prediction(s) left out of prediction drift"),
    ]
    notes = [f"{n} {text}" for n, text in what if n]
    inputs = rows.inputs
    if inputs:
        notes.append(
            f"{sum(inputs.values())} logged input(s) unusable for drift ("
            + ", ".join(f"{why} {n}" for why, n in sorted(inputs.items()))
            + ")"
        )
    lines = [f"skipped: {'; '.join(notes)} (details in --json: skipped_rows)"] if notes else []
    files = result.skipped_files
    if files:
        lines.append(
            f"skipped {len(files)} unreadable or damaged file(s): "
            + "; ".join(f"{escape(path)} ({escape(why)})" for path, why in files.items())
        )
    return lines
