"""`kiln train`: train a model on a data set, evaluate it, optionally register it; and which
run folders a killed `kiln train` left behind (`unfinished_runs`, for `kiln gc`)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kiln.cli.compile import Target
from kiln.cli.output import JsonOption, emit, err_console
from kiln.errors import InvalidArgument
from kiln.processes import pid_alive
from kiln.settings import Settings

if TYPE_CHECKING:  # both import torch: only a command that trains or compiles may pay for it
    from kiln.compile import RegisteredCompile
    from kiln.train import TrainResult


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are JSON when they parse (numbers, lists), else strings."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidArgument(
                f"--model-arg '{pair}' is not key=value; e.g. --model-arg hidden=256 "
                "or --model-arg 'channels=[32,64]'"
            )
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def train(
    dataset: Annotated[
        str, typer.Option(help="Data set name (kiln datasets list), .parquet file or image folder.")
    ] = "mnist-5k",
    model: Annotated[
        str, typer.Option(help="Builder: mlp, cnn, resnet, or package.module:function.")
    ] = "cnn",
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="Builder argument key=value; repeat.")
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="Maximum epochs (early stopping may end sooner).")
    ] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-2,
    patience: Annotated[
        int, typer.Option(help="Epochs without val improvement before stopping.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Seed for splits, initialisation and shuffling.")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads; 0 = KILN_THREADS or all cores.")] = 0,
    name: Annotated[
        str | None, typer.Option(help="Register the result as a new version of this model.")
    ] = None,
    compile_targets: Annotated[
        list[Target] | None,
        typer.Option(
            "--compile",
            help="After registering, compile for this target; repeat for several. Needs --name.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    as_json: bool = JsonOption,
) -> None:
    """Train a classifier, evaluate it on the test split and save the best checkpoint."""
    from kiln.train import TrainConfig
    from kiln.train import train as run_training

    settings = Settings()
    config = TrainConfig(
        dataset=dataset,
        model=model,
        model_args=parse_model_args(model_arg or []),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        seed=seed,
        threads=threads,
    )
    config.validate()
    if compile_targets and name is None:
        raise InvalidArgument(
            "--compile builds engines for a registered version: add --name NAME "
            "(e.g. kiln train --name digits --compile onnxruntime)"
        )
    if name is not None:
        from kiln.registry import validate_name

        validate_name(name)  # before training: a typo should not cost minutes
    result = run_training(config, settings, show_progress=progress and not as_json)
    payload: dict[str, Any] = {
        "run_id": result.run_id,
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.checkpoint),
        "dataset": result.dataset.name,
        "data_fingerprint": result.dataset.fingerprint,
        "model": model,
        "metrics": result.metrics,
        "history": result.history,
        "duration_s": result.duration_s,
    }
    compiled: RegisteredCompile | None = None
    compile_error = None
    if name is not None:
        payload["registered"] = register(name, result, settings)
        if compile_targets:
            from kiln.cli.compile import compile_ref

            compiled, compile_error = compile_ref(
                payload["registered"]["reference"], [t.value for t in compile_targets]
            )
            payload["compile"] = compiled.to_dict()

    def render(console: Console) -> None:
        m = result.metrics
        table = Table(title=f"{model} on {result.dataset.name}: test split", show_header=False)
        table.add_column("metric", style="bold")
        table.add_column("value")
        table.add_row("test accuracy", f"{m['test_accuracy']:.4f}")
        table.add_row("test loss", f"{m['test_loss']:.4f}")
        table.add_row("expected calibration error", f"{m['ece']:.4f}")
        table.add_row("best epoch", f"{m['best_epoch']} of {m['epochs_run']} run")
        table.add_row("train throughput", f"{m['train_samples_per_s']:.0f} samples/s")
        table.add_row("duration", f"{result.duration_s:.1f} s")
        console.print(table)
        per_class = Table(title="per-class accuracy")
        for cls in m["per_class_accuracy"]:
            per_class.add_column(cls, justify="right")
        per_class.add_row(
            *(f"{v:.3f}" if v is not None else "-" for v in m["per_class_accuracy"].values())
        )
        console.print(per_class)
        console.print(f"run: {result.run_dir}  (curves.png, metrics.jsonl, checkpoint/)")
        if "registered" in payload:
            console.print(f"registered [bold]{payload['registered']['reference']}[/]")
        if compiled is not None:
            from kiln.cli.compile import render as render_compile

            render_compile(compiled, console)

    emit(payload, as_json, render)
    if compile_error is not None:
        raise compile_error


def register(name: str, result: TrainResult, settings: Settings) -> dict[str, Any]:
    """Register the trained checkpoint as a new version of `name`, with this checkout's commit."""
    import kiln.registry
    from kiln.train import register_result, source_commit

    with kiln.registry.open(settings=settings) as registry:
        version = register_result(registry, name, result, git_commit=source_commit())
    err_console.print(f"registered {version.ref}")
    return {"name": name, "version": version.version, "reference": version.ref}


# The run folder's markers as `kiln.train.trainer` writes them (RUN_FINISHED, RUN_PROCESS),
# spelled out so that `kiln gc` does not import torch; a test keeps the two equal.
RUN_FINISHED = "summary.json"
RUN_PROCESS = "process.json"
ABANDONED_AFTER_S = 24 * 3600
"""An unfinished run whose writer cannot be checked (another host, or a run from before
process.json) counts as abandoned once nothing in it changed for this long: every epoch
appends to metrics.jsonl, and no epoch takes a day."""


@dataclass(frozen=True, slots=True)
class UnfinishedRun:
    """A run folder that never finished and whose writer is gone."""

    path: Path
    bytes: int
    reason: str


def unfinished_runs(runs_dir: Path, *, now: float | None = None) -> list[UnfinishedRun]:
    """The folders under `runs_dir` without RUN_FINISHED whose training process is gone:
    its pid (on this host) no longer runs, or nothing changed in it for ABANDONED_AFTER_S."""
    if not runs_dir.is_dir():
        return []
    now = time.time() if now is None else now
    host = socket.gethostname()
    found = []
    for run in sorted(runs_dir.iterdir()):
        if not run.is_dir() or (run / RUN_FINISHED).exists():
            continue
        files = [p for p in run.rglob("*") if p.is_file()]
        try:
            changed = max([run.stat().st_mtime, *(p.stat().st_mtime for p in files)])
            size = sum(p.stat().st_size for p in files)
        except FileNotFoundError:
            continue  # it is being written or removed right now
        writer = _writer(run / RUN_PROCESS)
        if writer is not None and writer[0] == host:
            if pid_alive(writer[1]):
                continue
            reason = f"never finished (no {RUN_FINISHED}) and its process {writer[1]} is gone"
        elif now - changed > ABANDONED_AFTER_S:
            hours = (now - changed) / 3600
            reason = f"never finished (no {RUN_FINISHED}) and unchanged for {hours:.0f} h"
        else:
            continue
        found.append(UnfinishedRun(run, size, reason))
    return found


def _writer(path: Path) -> tuple[str, int] | None:
    try:
        record = json.loads(path.read_text())
        return str(record["host"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
