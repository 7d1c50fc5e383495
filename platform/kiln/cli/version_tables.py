"""The tables `kiln models show` prints: a model's versions, one version in full, its artifacts.

Columns follow the task: a classifier's versions show test accuracy, loss and ECE; a
regressor's show test RMSE, MAE and R^2 (its loss is on standardised targets, so it says
little on its own). A version registered from a file (`config["source"]`) also says where it
came from and what its inputs and outputs are (and, in the versions table, its source file
when it has no description).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from kiln.registry import Artifact, ModelVersion
from kiln_engines import Signature

CLASSIFICATION_METRICS = {"test_accuracy": "accuracy", "test_loss": "loss", "ece": "ece"}
"""Metric key -> column heading, for classifiers (every version registered before #15)."""
REGRESSION_METRICS = {"test_rmse": "rmse", "test_mae": "mae", "test_r2": "r2"}
"""The same for regressors, in raw target units."""


def when(value: datetime) -> str:
    """A UTC time for tables (their headings say UTC)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def size(value: int) -> str:
    scaled = float(value)
    for unit in ("B", "KiB", "MiB"):
        if scaled < 1024:
            return f"{value} B" if unit == "B" else f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled:.1f} GiB"


def task_of(version: ModelVersion) -> str:
    """The version's task; versions registered before regression existed are classifiers."""
    return str(version.config.get("task") or "classification")


def versions_table(
    title: str,
    shown: Sequence[ModelVersion],
    artifacts: Mapping[int, Sequence[Artifact]],
    aliases: Mapping[int, Sequence[str]],
) -> Table:
    """One row per version; metric columns for each task among `shown` (classifiers' only,
    as before #15, when no regressor is shown)."""
    tasks = {task_of(v) for v in shown}
    columns: dict[str, dict[str, str]] = {}
    if tasks - {"regression"} or not tasks:
        columns["classification"] = CLASSIFICATION_METRICS
    if "regression" in tasks:
        columns["regression"] = REGRESSION_METRICS
    table = Table(title=title)
    table.add_column("version", justify="right")
    table.add_column("created (UTC)", no_wrap=True)
    for metrics in columns.values():
        for heading in metrics.values():
            table.add_column(heading, justify="right")
    for column in ("artifacts", "aliases", "about"):
        table.add_column(column, overflow="fold")
    for v in shown:
        task = "regression" if task_of(v) == "regression" else "classification"
        cells = [
            number(v.metrics.get(key)) if group == task else "-"
            for group, metrics in columns.items()
            for key in metrics
        ]
        kinds = ", ".join(a.kind.value for a in artifacts.get(v.version, [])) or "-"
        table.add_row(
            str(v.version),
            when(v.created_at)[:16],
            *cells,
            kinds,
            ", ".join(f"[bold]{a}[/]" for a in aliases.get(v.version, [])) or "-",
            v.description or _origin(v),
        )
    return table


def _origin(version: ModelVersion) -> str:
    """Where a version without a description came from: its training run, or the file it
    was registered from (`onnx sugar.onnx`)."""
    if version.lineage.run_id:
        return f"run {version.lineage.run_id}"
    source = version.config.get("source")
    if isinstance(source, Mapping):
        return f"{source.get('kind', '?')} {source.get('filename', '?')}"
    return "-"


def version_table(version: ModelVersion, aliases: list[str]) -> Table:
    table = Table(title=version.ref, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("created", when(version.created_at) + " UTC")
    table.add_row("aliases", ", ".join(aliases) or "-")
    table.add_row("description", version.description or "-")
    source = version.config.get("source")
    described: set[str] = set()
    if isinstance(source, Mapping):
        # A registered version: where it came from and what it takes, readable, in place of
        # the raw config entries.
        table.add_row("task", task_of(version))
        table.add_row("source", _source_text(source))
        described = {"source", "task"}
        signature = _signature(version.config.get("signature"))
        if signature is not None:
            table.add_row("inputs", "; ".join(t.describe() for t in signature.inputs))
            table.add_row("outputs", "; ".join(t.describe() for t in signature.outputs))
            table.add_row("max batch", number(signature.max_batch))
            described.add("signature")
    for key, value in version.lineage.to_dict().items():
        table.add_row(key.replace("_", " "), number(value))
    for key, value in sorted(version.metrics.items()):
        if isinstance(value, int | float | str | None):
            table.add_row(f"metric {key}", number(value))
    reference = version.config.get("reference")
    if isinstance(reference, Mapping) and reference:
        # The drift reference runs to hundreds of numbers: a line here, all of it in --json.
        table.add_row("config reference", _reference_text(reference))
        described.add("reference")
    for key, value in sorted(version.config.items()):
        if key not in described:
            table.add_row(f"config {key}", str(value))
    return table


def _reference_text(reference: Mapping[str, Any]) -> str:
    """`10 input features (1 categorical) from 353 samples; predictions on 45 held-out
    samples (the full profile: --json)`."""
    parts = []
    inputs = reference.get("inputs")
    if isinstance(inputs, Mapping):
        features = inputs.get("features")
        features = features if isinstance(features, Mapping) else {}
        categorical = sum(
            1
            for f in features.values()
            if isinstance(f, Mapping) and f.get("kind") == "categorical"
        )
        text = f"{len(features)} input features"
        if categorical:
            text += f" ({categorical} categorical)"
        parts.append(f"{text} from {inputs.get('samples', '?')} samples")
    predictions = reference.get("predictions")
    if isinstance(predictions, Mapping):
        parts.append(f"predictions on {predictions.get('samples', '?')} held-out samples")
    return "; ".join(parts or ["recorded"]) + " (the full profile: --json)"


def _source_text(source: Mapping[str, Any]) -> str:
    """`onnx model.onnx (sha256 ab12…, registered by ana)`, plus a module's builder."""
    text = f"{source.get('kind', '?')} {source.get('filename', '?')}"
    details = []
    if source.get("sha256"):
        details.append(f"sha256 {str(source['sha256'])[:16]}…")
    if source.get("registered_by"):
        details.append(f"registered by {source['registered_by']}")
    if source.get("builder"):
        args = source.get("model_args") or {}
        given = ", ".join(f"{k}={v}" for k, v in args.items())
        details.append(f"builder {source['builder']}" + (f"({given})" if given else ""))
    return text + (f" ({', '.join(details)})" if details else "")


def _signature(recorded: Any) -> Signature | None:
    """The recorded signature, or None when there is none or it cannot be read (then the raw
    config row shows what is there)."""
    if not isinstance(recorded, Mapping):
        return None
    try:
        return Signature.from_dict(recorded)
    except (KeyError, TypeError, ValueError):
        return None


def artifacts_table(found: list[Artifact]) -> Table:
    table = Table(title="artifacts")
    for column in ("kind", "file", "size", "sha256", "target", "libraries"):
        table.add_column(column, overflow="fold")
    for a in found:
        table.add_row(
            a.kind.value,
            a.filename,
            size(a.size),
            a.sha256[:16] + "…",
            ", ".join(f"{k}={v}" for k, v in a.target.items()) or "-",
            ", ".join(f"{k} {v}" for k, v in a.libraries.items()) or "-",
        )
    return table
