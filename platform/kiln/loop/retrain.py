"""Retraining from production traffic: parent data + labelled traffic ► train ► compile ►
register ► `candidate`.

The new training set is the parent version's own data set (found by lineage: its checkpoint
config names the data set and split) plus the labelled requests of the traffic window, minus
the held-out slice the promotion gates judge on, and minus every request whose input equals a
sample of the parent's test split (clients may well send those; learning them would make the
held-out gate judge the candidate on its own training data). The test split thus stays
untouched by the training of every version retrained from it, and the held-out numbers mean
what they say. Labelled traffic is scarce next to the original data, so its rows are repeated
until they make up about a quarter of the training set: enough to learn the new inputs
without forgetting the old ones.

A text version retrains the same way on the parent's texts plus the labelled requests' logged
strings (`texts`; the held-out guard compares the texts' UTF-8 bytes). It keeps the parent's
builder and tokenizer settings (kind, vocabulary size, maximum length) and trains a new
tokenizer on the new training set, as `kiln train` does (a pretrained encoder keeps its own);
the new tokenizer makes it a new version, its lineage names the parent. A warm start keeps the
parent's tokenizer instead: its weights are indexed by that vocabulary.

A version registered from the user's own PyTorch module is rebuilt and fine-tuned the same way
(`kiln.loop.module_source`); one registered from an ONNX file or an exported program cannot
be, and `retrainable` says what to do instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from kiln.compile import CompileOptions, compile_version
from kiln.data import Dataset, Split, load_recorded, sample_digests
from kiln.data.dataset import TEXT
from kiln.errors import DatasetInvalid, DatasetNotFound, FailedPrecondition, KilnError
from kiln.evaluate.labelled import DEFAULT_HOLDOUT, LabelledTraffic, holdout_mask, labelled_traffic
from kiln.loop.module_source import (
    check_module_source,
    is_module_source,
    module_train_config,
    rebuild,
    register_module_result,
)
from kiln.registry import AliasMove, ArtifactKind, ModelVersion, Registry
from kiln.settings import Settings
from kiln.traffic import Window, log_store
from kiln.train import TrainConfig, load_checkpoint, register_result, train
from kiln.train.distributed import World

Progress = Callable[[str], None]
TRAFFIC_SHARE = 0.25
"""Target share of (repeated) traffic rows in the retraining set."""


@dataclass(frozen=True)
class RetrainOptions:
    since: str = "24h"
    min_labels: int = 100
    holdout_fraction: float = DEFAULT_HOLDOUT
    warm_start: bool = False
    epochs: int | None = None
    """None: the parent's epochs."""
    alias: str = "candidate"
    show_progress: bool = True
    until: datetime | None = None
    """The traffic window's end; None: now. Every rank of a distributed retraining gets its
    agent's, so all read the same rows."""
    run_id: str | None = None
    """The training run's folder name (a distributed run's agent picks it); None: a new one."""


@dataclass
class RetrainPlan:
    """What a retraining trains on, decided before any training: `plan` checks all that can
    fail cheaply, so a distributed run's agent can refuse before it starts a rank."""

    parent: ModelVersion
    window: Window
    base: Dataset
    """The parent's own data set, before the traffic was mixed in."""
    rows: LabelledTraffic
    """The window's labelled requests, de-duplicated."""
    held: np.ndarray
    """True for the rows held out for the gates."""
    excluded: int
    learn: LabelledTraffic
    dataset: Dataset
    repeat: int
    config: TrainConfig


@dataclass
class RetrainResult:
    version: ModelVersion
    parent: ModelVersion
    window: Window
    labels: int
    """Labelled requests found in the window (after de-duplication)."""
    trained_on: int
    """Of them, used for training."""
    held_out: int
    """Of them, held out by request id for the traffic gate."""
    excluded_heldout: int
    """Of them, left out because their input equals a sample of the parent's test split."""
    repeat: int
    metrics: dict[str, Any]
    engines: list[str]
    alias_move: AliasMove | None
    dataset: Dataset = field(repr=False)
    """What the new version was trained, validated and tested on."""
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    """Labelled rows left out because they could not be used, by reason (see
    `kiln.evaluate.labelled.labelled_traffic`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version.ref,
            "parent": self.parent.ref,
            "window": {
                "since": self.window.since.isoformat(),
                "until": self.window.until.isoformat(),
            },
            "labels": self.labels,
            "trained_on": self.trained_on,
            "held_out": self.held_out,
            "excluded_heldout": self.excluded_heldout,
            "skipped_rows": self.skipped,
            "repeat": self.repeat,
            "metrics": self.metrics,
            "engines": self.engines,
            "alias": self.alias_move.alias if self.alias_move else None,
            **self._tokenizers(),
        }

    def _tokenizers(self) -> dict[str, Any]:
        """A text version's tokenizer beside its parent's (a new one, unless warm-started)."""
        new, old = (v.config.get("text") or {} for v in (self.version, self.parent))
        if not new:
            return {}
        changed = new.get("sha256") != old.get("sha256")
        return {"tokenizer": {"sha256": new.get("sha256"), "parent_sha256": old.get("sha256"),
                              "new": changed}}  # fmt: skip


def deduplicate(rows: LabelledTraffic) -> LabelledTraffic:
    """Keep one row per distinct input (the last labelled one)."""
    last = {k: i for i, k in enumerate(sample_digests(rows.x))}
    keep = np.zeros(len(rows), dtype=bool)
    keep[list(last.values())] = True
    return rows.subset(keep)


def heldout_duplicates(rows: LabelledTraffic, test: Split) -> np.ndarray:
    """True for the rows whose input equals a sample of `test` (by content, see
    `sample_digests`): they must not be learned from, or the test split stops being held out."""
    held_out = set(sample_digests(test.x))
    return np.fromiter((k in held_out for k in sample_digests(rows.x)), dtype=bool, count=len(rows))


def parent_dataset(parent: ModelVersion, settings: Settings) -> Dataset:
    config = parent.config
    split = config.get("split") or {}
    name = str(config.get("dataset", ""))
    try:
        return load_recorded(name, split, settings, seed=int(config.get("seed", 0)))
    except (DatasetNotFound, DatasetInvalid) as exc:
        raise FailedPrecondition(
            f"cannot retrain {parent.ref}: its data set '{name}' is not available here "
            f"({exc.message}). Restore it, or train a new version with kiln train"
        ) from exc


def retrainable(parent: ModelVersion) -> None:
    """Refuse, saying what to do instead, a version Kiln cannot train further: one registered
    from an ONNX file or an exported program (`kiln register`) is a fixed graph, not a model
    Kiln can rebuild; a module source is retrained when `check_module_source` allows it."""
    source = parent.config.get("source") or {}
    kind = source.get("kind")
    if kind is None:
        return
    if kind == "module":
        check_module_source(parent)
        return
    what, option = {
        "onnx": ("an ONNX file", "--onnx new.onnx"),
        "exported": ("an exported program", "--exported new.pt2"),
    }.get(kind, (f"a source of kind '{kind}'", "..."))
    raise FailedPrecondition(
        f"cannot retrain {parent.ref}: it was registered from {what} "
        f"('{source.get('filename', '?')}'), which Kiln did not train. Train the next "
        "version where this one was made, on data that includes the labelled traffic "
        f"(Parquet under KILN_HOME/traffic/model={parent.name} and KILN_HOME/feedback), then "
        f"`kiln register {parent.name} {option}`; traffic, feedback, evaluation, drift, gates, "
        "promotion and rollouts work for it as for any version"
    )


def retrain_config(parent: ModelVersion, task: str, epochs: int | None) -> TrainConfig:
    """How the parent was trained (a module source: the task's defaults for its module),
    with `epochs` when given."""
    if is_module_source(parent):
        config = module_train_config(parent, task)
    else:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(
            **{k: v for k, v in (parent.config.get("train") or {}).items() if k in known}
        )
    return config if epochs is None else dataclasses.replace(config, epochs=epochs)


def mixed_dataset(base: Dataset, traffic: LabelledTraffic, seed: int) -> tuple[Dataset, int]:
    """Base splits plus traffic rows (90% train, 10% validation); returns it and the repeat."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(traffic))
    n_val = max(1, len(traffic) // 10)
    val_idx, train_idx = order[:n_val], order[n_val:]
    repeat = int(np.clip(round(TRAFFIC_SHARE * len(base.train) / max(1, len(train_idx))), 1, 8))
    # Traffic labels take the base's dtype: int64 classes, or a regressor's float32 targets
    # (feedback values arrive as float64).
    labels = traffic.y.astype(base.train.y.dtype, copy=False)
    tx = np.concatenate([base.train.x, *([traffic.x[train_idx]] * repeat)])
    ty = np.concatenate([base.train.y, *([labels[train_idx]] * repeat)])
    vx = np.concatenate([base.val.x, traffic.x[val_idx]])
    vy = np.concatenate([base.val.y, labels[val_idx]])
    digest = hashlib.sha256(base.fingerprint.encode())
    # Texts are hashed by content (an object array's bytes are pointers).
    digest.update(
        b"".join(sample_digests(traffic.x))
        if traffic.x.dtype == object
        else np.ascontiguousarray(traffic.x).tobytes()
    )
    digest.update(np.ascontiguousarray(traffic.y).tobytes())
    mixed = dataclasses.replace(
        base,
        train=Split(tx, ty),
        val=Split(vx, vy),
        fingerprint=digest.hexdigest(),
        source=f"{base.source} + {len(traffic)} labelled requests",
    )
    return mixed, repeat


def plan(
    registry: Registry,
    name: str,
    settings: Settings,
    options: RetrainOptions = RetrainOptions(),
    progress: Progress = lambda _: None,
) -> RetrainPlan:
    """The data set and training config a retraining of `name` would use.

    Checks everything that can fail cheaply (a production version, its data set, enough
    labels). Raises FailedPrecondition with what to do.
    """
    parent = registry.resolve(f"{name}@production")
    retrainable(parent)
    window = Window.last(options.since, now=options.until)
    base = parent_dataset(parent, settings)
    task = str(parent.config.get("task") or "classification")
    text = base.modality == TEXT
    progress(f"reading labelled traffic of '{name}' since {window.since:%Y-%m-%d %H:%M} UTC")
    try:
        # The parent's classes and sample shape decide what a usable row is: a label outside
        # them, or an input of another shape, is skipped and counted, never learned from.
        rows = deduplicate(
            labelled_traffic(
                log_store(settings),
                name,
                window,
                num_classes=base.num_classes if task != "regression" else None,
                sample_shape=None if text else base.input_shape,
                task=task,
                text=text,
            )
        )
    except KilnError as exc:
        raise FailedPrecondition(f"cannot retrain '{name}': {exc.message}") from exc
    # Inputs equal to a test sample are never learned from, not even by a version retrained
    # from this one: the test split is what every version's held-out accuracy is measured on.
    duplicate = heldout_duplicates(rows, base.test)
    excluded = int(duplicate.sum())
    usable = len(rows) - excluded
    if usable < options.min_labels:
        left_out = (
            f" ({excluded} more left out: their inputs equal samples of {parent.ref}'s "
            "held-out test split)"
            if excluded
            else ""
        )
        raise FailedPrecondition(
            f"only {usable} labelled requests for '{name}' in the last {options.since}"
            f"{left_out}; retraining needs at least {options.min_labels} (--min-labels). Send "
            "ground truth with the kiln.v1 feedback service, the service's /feedback endpoint "
            "or `kiln feedback import FILE`, or widen --since"
        )
    if rows.x.shape[1:] != base.input_shape:
        raise FailedPrecondition(
            f"logged inputs have shape {rows.x.shape[1:]}, but {parent.ref} takes "
            f"{base.input_shape}; this traffic cannot train it"
        )
    held = holdout_mask(rows.request_ids, options.holdout_fraction) & ~duplicate
    learn = rows.subset(~held & ~duplicate)
    config = retrain_config(parent, task, options.epochs)
    dataset, repeat = mixed_dataset(base, learn, config.seed)
    return RetrainPlan(parent, window, base, rows, held, excluded, learn, dataset, repeat, config)


def retrain(
    registry: Registry,
    name: str,
    settings: Settings,
    options: RetrainOptions = RetrainOptions(),
    progress: Progress = lambda _: None,
) -> RetrainResult:
    """Train a new version of `name` on its production version's data plus labelled traffic.

    Checks everything that can fail cheaply (`plan`) before training. Raises
    FailedPrecondition with what to do; leaves no version behind when compiling the new one
    fails. One process: under torch.distributed, every rank calls `retrain_as_rank`.
    """
    result = retrain_as_rank(registry, name, settings, options, progress)
    if result is None:
        raise FailedPrecondition(
            "this process is not rank 0 of its torch.distributed run, so it registers "
            "nothing: distributed retraining runs through `kiln retrain --nproc N`"
        )
    return result


def retrain_as_rank(
    registry: Registry,
    name: str,
    settings: Settings,
    options: RetrainOptions = RetrainOptions(),
    progress: Progress = lambda _: None,
) -> RetrainResult | None:
    """`retrain` on one rank of a torch.distributed run (a single process is rank 0): every
    rank plans and trains; rank 0 alone registers, compiles and moves the alias, and returns
    the result; the other ranks return None."""
    planned = plan(registry, name, settings, options, progress)
    parent, dataset, learn, held = planned.parent, planned.dataset, planned.learn, planned.held
    rows, excluded, repeat = planned.rows, planned.excluded, planned.repeat
    window, train_config = planned.window, planned.config
    text = dataset.modality == TEXT
    # A user's module is rebuilt and always starts from its registered weights (there is no
    # Kiln initialisation of it to start from instead).
    module = rebuild(registry, parent) if is_module_source(parent) else None
    warm = None
    if options.warm_start and module is None:
        warm = load_checkpoint(registry.artifact_file(registry.checkpoint(name, parent.version)))
        if text:  # the checkpoint's own tokenizer, not a new one (the trainer insists)
            train_config = dataclasses.replace(train_config, tokenizer=None, vocab_size=None)
    progress(
        f"training on {len(planned.base.train)} {dataset.name} samples + {len(learn)} "
        f"labelled requests (x{repeat}); {int(held.sum())} held out for the gates"
        + (
            f"; {excluded} left out: their inputs equal samples of {parent.ref}'s held-out "
            "test split"
            if excluded
            else ""
        )
    )
    result = train(
        train_config, settings, dataset=dataset, show_progress=options.show_progress,
        warm_start=warm, model=module, run_id=options.run_id,
    )  # fmt: skip
    if not World.from_environment().is_main:
        return None  # rank 0 registers what the ranks trained
    retrain_info = {
        "parent": parent.ref,
        "since": window.since.isoformat(),
        "until": window.until.isoformat(),
        "labels": len(rows),
        "trained_on": len(learn),
        "held_out": int(held.sum()),
        "excluded_heldout": excluded,
        "repeat": repeat,
        "warm_start": options.warm_start or module is not None,
    }
    if module is not None:
        version = register_module_result(registry, parent, module, result, retrain_info)
    else:
        version = register_result(
            registry,
            name,
            result,
            parent=parent,
            extra_config={"retrain": retrain_info},
            git_commit=parent.lineage.git_commit if parent.lineage else None,
            description=f"retrained from {parent.ref} on {len(learn)} labelled requests",
        )
    targets = _parent_targets(registry, parent)
    progress(f"compiling {version.ref} for {', '.join(targets)}")
    try:
        compiled = compile_version(registry, version.ref, CompileOptions(targets=targets), settings)
        engines = sorted({a.kind.value for a in compiled.artifacts})
        if not _has_engine(registry, version):
            raise FailedPrecondition(
                f"no engine of {version.ref} passed parity; see `kiln compile {version.ref}`"
            )
    except BaseException:
        # Nothing half-done: a retrained version without a verified engine is not kept.
        registry.delete_version(name, version.version)
        raise
    move = registry.promote(
        version.ref, options.alias, reason=f"retrained from {parent.ref}", gates=[]
    )
    return RetrainResult(
        version=registry.get_version(name, version.version),
        parent=parent,
        window=window,
        labels=len(rows),
        trained_on=len(learn),
        held_out=int(held.sum()),
        excluded_heldout=excluded,
        skipped=rows.skipped,
        repeat=repeat,
        metrics=result.metrics,
        engines=engines,
        alias_move=move,
        dataset=dataset,
    )


def _parent_targets(registry: Registry, parent: ModelVersion) -> tuple[str, ...]:
    kinds = {a.kind.value for a in registry.artifacts(parent.name, parent.version)}
    targets = tuple(k for k in ("onnxruntime", "aotinductor", "tensorrt") if k in kinds)
    return targets or ("onnxruntime",)


def _has_engine(registry: Registry, version: ModelVersion) -> bool:
    return any(
        a.kind.is_engine and a.kind is not ArtifactKind.ONNX
        for a in registry.artifacts(version.name, version.version)
    )
