"""The trainer: AdamW, warm-up + cosine, gradient clipping, early stopping, seeded on CPU.

Classifiers and regressors go through the same loop; what differs (model, loss, metrics)
comes from the data set's task through `kiln.train.objectives`.

One function, `train(config, settings)`, reads top to bottom like the loop it runs. It writes
`KILN_HOME/runs/RUN_ID/` (process.json first, metrics.jsonl per epoch, curves.png,
checkpoint/, summary.json last) and returns a `TrainResult` holding the best checkpoint (by
validation loss) and its test metrics. summary.json marks a finished run; process.json names
the process writing it, so `kiln gc` can tell a killed run from one still training.

Started by a torch.distributed launcher, the same loop runs on every rank with DDP
(`kiln.train.distributed` says how batches, metrics and early stopping are shared); only
rank 0 writes the run folder. A single process runs exactly the operations it always did.
"""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel

from kiln.data import REGRESSION, Dataset, load_dataset
from kiln.data.dataset import TEXT
from kiln.errors import InvalidArgument
from kiln.settings import Settings
from kiln.text import TextTokenizer
from kiln.train.builders import normalization_shape
from kiln.train.checkpoint import LoadedCheckpoint, save_checkpoint
from kiln.train.config import CheckpointConfig, TrainConfig
from kiln.train.curves import plot_curves
from kiln.train.distributed import World
from kiln.train.inputs import Inputs, TensorInputs, TokenInputs, as_inputs, text_tokenizer
from kiln.train.objectives import (
    Classification,
    Objective,
    RawRegression,
    Regression,
    TextClassification,
)

RUN_PROCESS = "process.json"
"""Written when a run starts: the host and pid of the process training it."""
RUN_FINISHED = "summary.json"
"""Written (atomically) when a run has finished: its config and metrics."""
PREDICT_BATCH = 1024
PREDICT_BATCH_TEXT = 256
"""Rows per prediction batch for text: attention holds batch x heads x length^2 scores."""


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    checkpoint: Path
    config: CheckpointConfig
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    dataset: Dataset
    duration_s: float
    tokenizer: TextTokenizer | None = None
    """A text model's tokenizer (saved beside the checkpoint as tokenizer.json)."""


def normalization_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Per-channel (images) or per-feature mean and std of the training inputs."""
    shape = normalization_shape(x.shape[1:])
    axes = tuple(i for i, d in enumerate(shape) if d == 1)
    mean = x.mean(axis=axes, dtype=np.float64)
    # A floor keeps constant features (MNIST's empty borders) from dividing by zero.
    std = np.maximum(x.std(axis=axes, dtype=np.float64), 1e-3)
    return {"mean": mean.ravel().tolist(), "std": std.ravel().tolist()}


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def configure_determinism(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # CPU kernels are deterministic for a fixed thread count; this turns any that are not
    # into errors instead of silently different metrics.
    torch.use_deterministic_algorithms(True)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and kernels only; biases and norm scales are left alone (as in nanoGPT)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    x: np.ndarray | tuple[np.ndarray, ...] | Inputs,
    batch_size: int = 1024,
) -> np.ndarray:
    """The model's outputs for every row of `x` (in row order), in eval mode: `x` is one input
    array, a tuple of arrays (the model's positional inputs, e.g. a text model's
    `(input_ids, attention_mask)`), or `Inputs` (`TokenInputs` batches texts by length)."""
    model.eval()
    inputs = as_inputs(x)
    order = inputs.prediction_order()
    parts = [
        model(*inputs.batch(order[i : i + batch_size])) for i in range(0, len(order), batch_size)
    ]
    if not parts:
        raise InvalidArgument("nothing to predict: the inputs have no rows")
    outputs = torch.cat(parts)
    restored = torch.empty_like(outputs)
    restored[order] = outputs
    return restored.numpy()


def objective_for(
    config: TrainConfig,
    ds: Dataset,
    warm_start: LoadedCheckpoint | None,
    *,
    prebuilt: bool = False,
    tokenizer: TextTokenizer | None = None,
) -> Objective:
    """The objective for `ds`'s task (`config` resolved against it); a warm start keeps its
    checkpoint's target statistics, as it keeps its input normalisation. A `prebuilt`
    regressor (a user's module) outputs raw values: its loss standardises them instead. A
    text data set's classifier takes `tokenizer`'s ids."""
    if tokenizer is not None:
        return TextClassification(ds.class_names, tokenizer)
    if ds.task != REGRESSION:
        return Classification(ds.class_names)
    if prebuilt:
        return RawRegression(str(config.loss), Regression.target_stats(ds.train.y))
    target = None
    if warm_start is not None:
        target = warm_start.config.target_normalization
    return Regression(str(config.loss), target or Regression.target_stats(ds.train.y))


def new_run_id(config: TrainConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    model = config.model.rsplit(":", 1)[-1]
    return f"{stamp}-{Path(config.dataset).stem}-{model}-{secrets.token_hex(3)}"


def train(  # noqa: PLR0912, PLR0915
    config: TrainConfig,
    settings: Settings,
    *,
    dataset: Dataset | None = None,
    show_progress: bool = True,
    warm_start: LoadedCheckpoint | None = None,
    model: torch.nn.Module | None = None,
    run_id: str | None = None,
) -> TrainResult:
    """Train, keep the best epoch by validation loss, evaluate it on the test split, save it.

    The data set's task decides what is trained: a classifier (cross-entropy; accuracy) or a
    regressor (MSE or Huber on standardised targets; MAE, RMSE, R^2). `dataset` replaces
    loading `config.dataset` (retraining passes a mixed one); `warm_start` begins from a
    checkpoint's weights and normalisation instead of a fresh initialisation. `model` is a
    module built elsewhere (a user's, rebuilt from `kiln register --module`) to train instead
    of building `config.model`: raw inputs in, class scores or raw-unit values out; it is
    trained in place from its own weights and left holding the best epoch's. Raises
    InvalidArgument when `config.task` or `config.loss` does not fit the data set.

    `run_id` names the run folder (a launcher picks it, to find the folder of a failed run);
    by default a new one. Under a torch.distributed launcher every rank calls this; ranks
    other than 0 return a result whose files were not written.
    """
    config.validate()
    started = time.perf_counter()
    world = World.from_environment()
    threads = config.threads or world.threads(settings.thread_count())
    configure_determinism(config.seed, threads)
    world.join()

    ds = dataset or load_dataset(
        config.dataset,
        settings,
        seed=config.seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    config = config.resolved(ds.task)
    config.check_modality(ds.modality, ds.input_shape)
    world.check_fits(config.batch_size, len(ds.val), len(ds.test))
    world.check_same_data(ds.fingerprint)
    tokenizer = text_tokenizer(config, ds.train.x, warm_start) if ds.modality == TEXT else None
    objective = objective_for(
        config, ds, warm_start, prebuilt=model is not None, tokenizer=tokenizer
    )
    norm: dict[str, list[float]] = {}
    if tokenizer is None:
        norm = warm_start.config.normalization if warm_start else normalization_stats(ds.train.x)
    if model is None:
        model = objective.build(config, ds, norm)
        if warm_start is not None:
            model.load_state_dict(warm_start.model.state_dict())
    trained: torch.nn.Module = model
    if world.active:
        # Same initial weights everywhere (the seed; DDP broadcasts rank 0's anyway), then a
        # generator per rank so dropout masks differ between ranks; rank 0 keeps the seed's.
        if not world.is_main:
            torch.manual_seed(config.seed + world.rank)
        trained = DistributedDataParallel(objective.parallel(model))
    # Each split is tokenised once; batches are cut from it (TokenInputs).
    train_x, val_x, test_x = (
        TokenInputs.encode(tokenizer, split.x) if tokenizer else TensorInputs(split.x)
        for split in (ds.train, ds.val, ds.test)
    )
    predict_batch = PREDICT_BATCH_TEXT if tokenizer else PREDICT_BATCH
    y_train = torch.from_numpy(ds.train.y)
    n = len(ds.train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total_steps))

    opt = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, warmup, config.min_lr_fraction)
    )
    shuffle = torch.Generator().manual_seed(config.seed)

    run_id = run_id or new_run_id(config)
    run_dir = settings.runs_dir / run_id
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        (run_dir / RUN_PROCESS).write_text(json.dumps(owner) + "\n")

    def outputs(inputs: Inputs, split: Any) -> np.ndarray:
        """`model`'s outputs on a held-out split; under DDP each rank predicts its share."""
        if not world.active:
            return predict_logits(model, inputs, predict_batch)
        return world.gather_rows(
            len(split),
            lambda rows: predict_logits(
                model,
                tuple(t.numpy() for t in inputs.batch(torch.from_numpy(rows))),
                predict_batch,
            ),
        )

    history: list[dict[str, float]] = []
    best_loss, best_epoch, stale = math.inf, 0, 0
    best_state = copy.deepcopy(model.state_dict())

    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not (show_progress and world.is_main),
    )
    metrics_log = run_dir / "metrics.jsonl" if world.is_main else Path(os.devnull)
    with progress, metrics_log.open("w") as log:
        task = progress.add_task(
            "train", total=total_steps, epoch=1, epochs=config.epochs, stats=""
        )
        for epoch in range(1, config.epochs + 1):
            world.fault(epoch)
            epoch_start = time.perf_counter()
            model.train()
            perm = train_x.epoch_order(
                torch.randperm(n, generator=shuffle), config.batch_size, shuffle
            )
            loss_sum = torch.zeros(())
            metric_sum = objective.zero()
            seen = 0
            for step in range(steps_per_epoch):
                idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
                # BatchNorm cannot train on a batch of one; under DDP every rank needs a row.
                if idx.numel() < max(2, world.world_size):
                    continue
                local = world.shard(idx)
                xb, yb = train_x.batch(local), y_train[local]
                loss, batch_metric = objective.step(trained, xb, yb)
                opt.zero_grad(set_to_none=True)
                if world.active:
                    weighted = loss * world.loss_weight(local.numel(), idx.numel())
                    weighted.backward()  # type: ignore[no-untyped-call]
                else:
                    loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                sched.step()
                # Accumulate as tensors: a .item() per step would cost a sync for nothing.
                loss_sum += loss.detach() * local.numel()
                metric_sum += batch_metric
                seen += local.numel()
                progress.advance(task)

            if world.active:
                loss_sum, metric_sum, total = world.sum([loss_sum, metric_sum, torch.tensor(seen)])
                seen = int(total)
            train_seconds = time.perf_counter() - epoch_start
            val = objective.evaluate(outputs(val_x, ds.val), ds.val.y)
            metric = objective.metric
            row = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / seen,
                f"train_{metric}": objective.train_metric(metric_sum, seen),
                "val_loss": val["loss"],
                f"val_{metric}": val[metric],
                "lr": sched.get_last_lr()[0],
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            progress.update(
                task,
                epoch=min(epoch + 1, config.epochs),
                stats=f"loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                f"val_{metric.replace('accuracy', 'acc')} {row[f'val_{metric}']:.4f}",
            )
            if val["loss"] < best_loss:
                best_loss, best_epoch, stale = val["loss"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            if world.agree(stale >= config.patience):
                break

    model.load_state_dict(best_state)
    model.eval()
    test_outputs = outputs(test_x, ds.test)
    test = objective.evaluate(test_outputs, ds.test.y)
    duration = time.perf_counter() - started
    # Throughput of the optimisation loop alone; epoch "seconds" also include validation.
    samples = len(ds.train) * len(history)
    train_seconds = sum(r["train_seconds"] for r in history)
    metric = objective.metric
    metrics: dict[str, Any] = {
        **objective.test_metrics(test),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "best_val_loss": best_loss,
        f"best_val_{metric}": history[best_epoch - 1][f"val_{metric}"],
        "duration_s": duration,
        "train_samples_per_s": samples / train_seconds if train_seconds else 0.0,
    }
    # What a distributed run was (the checkpoint's config, so the version's too); a single
    # process's config stays as it always was.
    layout = {"world_size": world.world_size, "backend": world.backend}
    distributed = {"distributed": layout | {"global_batch": config.batch_size}}
    if not world.active:
        distributed = {}
    ckpt_config = CheckpointConfig(
        **objective.checkpoint_fields(ds),
        builder=config.model,
        builder_args=config.model_args,
        input_shape=list(ds.input_shape),
        normalization=norm,
        dataset=ds.name,
        data_fingerprint=ds.fingerprint,
        split=ds.split_spec.as_dict(),
        seed=config.seed,
        train=config.as_dict() | {"threads": threads} | distributed,
        metrics={k: v for k, v in metrics.items() if k not in ("confusion", "duration_s")},
        run_id=run_id,
        torch_version=torch.__version__,
        # What production traffic is compared with to measure drift (kiln evaluate).
        reference=objective.reference(ds, test_outputs),
    )
    world.leave()
    if not world.is_main:
        return TrainResult(
            run_id, run_dir, run_dir, ckpt_config, metrics, history, ds, duration, tokenizer
        )
    checkpoint = save_checkpoint(model, ckpt_config, run_dir / "checkpoint", tokenizer=tokenizer)
    plot_curves(
        history,
        run_dir / "curves.png",
        title=f"{config.model} on {ds.name}",
        metric=objective.metric,
        loss_label=objective.loss_label,
    )
    summary = {
        "run_id": run_id,
        "config": config.as_dict(),
        "metrics": metrics,
        "distributed": layout | {"global_batch": config.batch_size},
    }
    # Last, and whole or not at all: its presence is what says the run finished.
    partial = run_dir / f".{RUN_FINISHED}.partial"
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, run_dir / RUN_FINISHED)
    return TrainResult(
        run_id, run_dir, checkpoint, ckpt_config, metrics, history, ds, duration, tokenizer
    )
