"""`kiln train`: train a model on a data set, evaluate it, optionally register it; and which
run folders a killed `kiln train` left behind (`unfinished_runs`, for `kiln gc`)."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kiln.cli import distributed
from kiln.cli.compile import Target
from kiln.cli.output import JsonOption, emit, err_console
from kiln.errors import InvalidArgument
from kiln.processes import pid_alive
from kiln.settings import Settings

if TYPE_CHECKING:  # both import torch: only a command that trains or compiles may pay for it
    from kiln.compile import RegisteredCompile
    from kiln.train import TrainResult

TEXT_HELP: dict[str, dict[str, Any]] = {
    "transformer": {"epochs": 4, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.1, "patience": 2},
    "gru": {"epochs": 8, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.1, "patience": 2},
    "minilm": {"epochs": 2, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01, "patience": 1},
}
"""`kiln.train.TEXT_DEFAULTS` for the help text (importing it would import torch); a test
keeps the two equal."""


def text_default(key: str) -> str:
    """A setting's text defaults per builder, for the help: "4 transformer, 8 gru, ..."."""
    return ", ".join(f"{defaults[key]} {builder}" for builder, defaults in TEXT_HELP.items())


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


class Task(StrEnum):
    """`--task`: the tasks `kiln.data.TASKS` names, spelled out so the CLI starts without
    importing the data layer."""

    classification = "classification"
    regression = "regression"


class TokenizerKind(StrEnum):
    """`--tokenizer`: `kiln.text.KINDS`, spelled out so the CLI starts without tokenizers."""

    bpe = "bpe"
    wordpiece = "wordpiece"


class Loss(StrEnum):
    """`--loss`: `kiln.train.config`'s classification and regression losses."""

    cross_entropy = "cross-entropy"
    mse = "mse"
    huber = "huber"


@distributed.rank_errors()
def train(
    ctx: typer.Context,
    dataset: Annotated[
        str, typer.Option(help="Data set name (kiln datasets list), .parquet file or image folder.")
    ] = "mnist-5k",
    task: Annotated[
        Task | None,
        typer.Option(
            help="What to train; default: the data set's task (a 'target' column or a "
            "regression set: regression)."
        ),
    ] = None,
    loss: Annotated[
        Loss | None,
        typer.Option(help="Loss: cross-entropy (classification), mse (default) or huber."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Builder: mlp, cnn, resnet; for text transformer, gru, minilm (fine-tunes the "
            "pretrained all-MiniLM-L6-v2); or package.module:function "
            "[default: cnn; mlp for regression; transformer for text]."
        ),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--model-arg",
            help="Builder argument key=value; repeat [regression default: hidden=[32] dropout=0].",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Maximum epochs (early stopping may end sooner) "
            f"[default: 8; 200 for regression; text: {text_default('epochs')}]."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Samples per step "
            f"[default: 64; 32 for regression; text: {text_default('batch_size')}]."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak AdamW learning rate "
            f"[default: 0.003; 0.001 for regression; text: {text_default('lr')}]."
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            help=f"AdamW weight decay [default: 0.01; text: {text_default('weight_decay')}]."
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Epochs without val improvement before stopping "
            f"[default: 3; 20 for regression; text: {text_default('patience')}]."
        ),
    ] = None,
    tokenizer: Annotated[
        TokenizerKind | None,
        typer.Option(
            help="Text only: the tokenizer trained on the training split [default: bpe]; "
            "minilm uses its own."
        ),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            help="Text only: the trained tokenizer's vocabulary size "
            "[default: 4000 for transformer, 8000 for gru]."
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            help="Text only: tokens per text, longer texts truncated [default: 128; 64 for minilm]."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits, initialisation and shuffling.")] = 0,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads; 0 = KILN_THREADS or all cores "
            "[default: 0; 1 for regression and text]."
        ),
    ] = None,
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
    nproc: distributed.Nproc = 1,
    nnodes: distributed.Nnodes = 1,
    node_rank: distributed.NodeRank = 0,
    rdzv_endpoint: distributed.RdzvEndpoint = None,
    rdzv_timeout: distributed.RdzvTimeout = 300,
    as_json: bool = JsonOption,
) -> None:
    """Train a classifier or a regressor, evaluate it on the test split and save the best
    checkpoint. The data set decides which (a regression set such as diabetes, autompg or a
    Parquet file with a numeric 'target' column trains a regressor; a text set such as
    rotten-tomatoes a text classifier with its own tokenizer), and the defaults suit it."""
    from kiln.data import modality_of, task_of
    from kiln.train import TrainConfig
    from kiln.train import train as run_training
    from kiln.train.launcher import launch
    from kiln.train.trainer import new_run_id

    settings = Settings()
    given = {
        "model": model,
        "model_args": parse_model_args(model_arg) if model_arg else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "patience": patience,
        "threads": threads,
        "task": task.value if task else None,
        "loss": loss.value if loss else None,
        "tokenizer": tokenizer.value if tokenizer else None,
        "vocab_size": vocab_size,
        "max_length": max_length,
    }
    modality = modality_of(dataset)
    # The task (and modality) pick the defaults, so a regression set trains an MLP without
    # --model mlp and a text set a transformer; the trainer still checks --task against the
    # data set it loads.
    config = TrainConfig.for_task(
        task.value if task else task_of(dataset),
        modality,
        dataset=dataset,
        seed=seed,
        **{key: value for key, value in given.items() if value is not None},
    )
    config.validate()
    config.check_modality(modality)
    if compile_targets and name is None:
        raise InvalidArgument(
            "--compile builds engines for a registered version: add --name NAME "
            "(e.g. kiln train --name digits --compile onnxruntime)"
        )
    if name is not None:
        from kiln.registry import validate_name

        validate_name(name)  # before training: a typo should not cost minutes
    layout = distributed.layout_of(ctx)
    if layout.distributed:
        layout.validate(config.batch_size)
        launch(
            layout,
            distributed.rank_args(ctx),
            run_id=new_run_id(config),
            runs_dir=settings.runs_dir,
        )
        return  # rank 0 printed the result and registered the version
    with distributed.lost_ranks():
        result = run_training(
            config,
            settings,
            show_progress=progress and not as_json,
            run_id=os.environ.get(distributed.RUN_ID_ENV),
        )
    if distributed.rank() != 0:
        return  # under torchrun, rank 0 alone reports and registers
    payload: dict[str, Any] = {
        "run_id": result.run_id,
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.checkpoint),
        "dataset": result.dataset.name,
        "data_fingerprint": result.dataset.fingerprint,
        "task": result.config.task,
        "model": config.model,
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

    emit(payload, as_json, lambda console: render(console, result, payload, compiled))
    if compile_error is not None:
        raise compile_error


def render(
    console: Console,
    result: TrainResult,
    payload: dict[str, Any],
    compiled: RegisteredCompile | None,
) -> None:
    """The tables `kiln train` prints: test metrics (a classifier's per-class accuracy too),
    the run folder, the version registered and what was compiled."""
    m = result.metrics
    title = f"{payload['model']} on {result.dataset.name}: test split"
    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    regression = result.config.task == "regression"
    if regression:
        table.add_row("test R^2", f"{m['test_r2']:.4f}")
        table.add_row("test RMSE", f"{m['test_rmse']:.4g}")
        table.add_row("test MAE", f"{m['test_mae']:.4g}")
        loss = result.config.train.get("loss")
        table.add_row(f"test loss ({loss}, standardised)", f"{m['test_loss']:.4f}")
    else:
        table.add_row("test accuracy", f"{m['test_accuracy']:.4f}")
        table.add_row("test loss", f"{m['test_loss']:.4f}")
        table.add_row("expected calibration error", f"{m['ece']:.4f}")
    table.add_row("best epoch", f"{m['best_epoch']} of {m['epochs_run']} run")
    table.add_row("train throughput", f"{m['train_samples_per_s']:.0f} samples/s")
    table.add_row("duration", f"{result.duration_s:.1f} s")
    console.print(table)
    if not regression:
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
