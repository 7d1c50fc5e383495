"""`register_source`: a model trained anywhere becomes a registry version Kiln can compile,
gate, serve and watch.

The version's checkpoint blob is the source file itself (the .onnx, the .pt2, or the module's
.safetensors weights); its config records the source (kind, file name, sha256, who registered
it, the builder and its arguments), the task and class names, and the signature. With a data
set, the config also holds what a trained version has (data set, fingerprint, split, seed,
input name and the reference profile of the source's own predictions on its test split), and
the metrics include the source's test metrics, so the promotion gates, drift and the held-out
checks find them where they look for a trained version's.

Task defaults: one output of width > 1 and no task is a classifier over classes "0".."k-1";
width 1 needs `task` to be said (a probability and a regression value look alike).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.data import REGRESSION, TASKS, Dataset, load_dataset
from kiln.data.profile import reference_profile
from kiln.errors import InvalidArgument, SourceInvalid
from kiln.registry import Lineage, ModelVersion, Registry
from kiln.settings import Settings
from kiln.sources.loading import LoadedSource, SourceSpec, load_source
from kiln.sources.onnx_model import single_file, uses_external_data
from kiln.sources.tensors import parse_ranges
from kiln_engines import DYNAMIC, Signature, TensorSpec

PREDICT_BATCH = 256


@dataclass(frozen=True)
class RegisterOptions:
    """What `kiln register` takes besides the source itself."""

    task: str | None = None
    """"classification" or "regression"; None: from the output width (see the module doc)."""
    class_names: tuple[str, ...] = ()
    dataset: str | None = None
    """A data set `kiln.data.load_dataset` loads: held-out data, reference profile, metrics."""
    seed: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)
    max_batch: int | None = None
    description: str = ""
    actor: str | None = None
    input_ranges: Sequence[str] = ()
    """`NAME=LOW:HIGH` per input: the values compile's random held-out inputs take when no
    data set is recorded (e.g. the ids an embedding accepts)."""


def _who(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _task_and_classes(
    signature: Signature, options: RegisterOptions, dataset: Dataset | None
) -> tuple[str, list[str]]:
    first = signature.outputs[0]
    width = first.shape[-1] if len(first.shape) >= 2 else 1
    task = options.task or (dataset.task if dataset is not None else None)
    if dataset is not None and task != dataset.task:
        raise InvalidArgument(
            f"data set '{dataset.name}' is a {dataset.task} set, the model is registered for "
            f"{task}; give a {task} data set or --task {dataset.task}"
        )
    if task is None:
        if width in (1, DYNAMIC):
            per_row = "one value" if width == 1 else "a dynamic width"
            raise InvalidArgument(
                f"the first output '{first.name}' has {per_row} "
                "per row: say what it is with --task regression or --task classification "
                "--classes a,b"
            )
        task = "classification"
    if task not in TASKS:
        raise InvalidArgument(f"--task must be one of {', '.join(TASKS)}, got '{task}'")
    if task == REGRESSION:
        if options.class_names:
            raise InvalidArgument("--classes apply to classification, not to --task regression")
        return task, []
    classes = list(options.class_names)
    if not classes and dataset is not None:
        classes = list(dataset.class_names)
    if not classes and width > 1:
        classes = [str(i) for i in range(width)]
    if len(first.shape) != 2 or width != len(classes) or width < 2:
        shape = ",".join("N" if d == DYNAMIC else str(d) for d in first.shape)
        raise InvalidArgument(
            f"a classifier's first output must be [N, classes]; '{first.name}' is [{shape}] "
            f"and {len(classes)} class name(s) were given"
            + ("" if classes else " (give them with --classes a,b or --classes-file)")
        )
    if dataset is not None and len(dataset.class_names) != len(classes):
        raise InvalidArgument(
            f"data set '{dataset.name}' has {len(dataset.class_names)} classes, the model "
            f"{len(classes)}; give a data set with the model's classes"
        )
    if len(set(classes)) != len(classes):
        raise InvalidArgument("--classes must be distinct")
    return task, classes


def _name_outputs(signature: Signature, names: Sequence[str], task: str) -> Signature:
    outputs = signature.outputs
    if names:
        if len(names) != len(outputs):
            raise InvalidArgument(
                f"the model returns {len(outputs)} output(s), --output names {len(names)}"
            )
    elif len(outputs) == 1:
        names = ["prediction" if task == REGRESSION else "logits"]
    else:
        return signature
    renamed = tuple(TensorSpec(n, o.dtype, o.shape) for n, o in zip(names, outputs, strict=True))
    try:
        return Signature(signature.inputs, renamed, signature.max_batch)
    except ValueError as exc:
        raise InvalidArgument(f"--output: {exc}") from exc


def _require_batch_axis(signature: Signature, kind: str) -> None:
    fixed = [
        t for t in (*signature.inputs, *signature.outputs) if not t.shape or t.shape[0] != DYNAMIC
    ]
    if fixed:
        how = {
            "onnx": "export it with a dynamic batch axis (torch.onnx.export(..., dynamo=True, "
            "dynamic_shapes=...) or dynamic_axes={name: {0: 'batch'}})",
            "exported": "export it with dynamic_shapes={name: {0: torch.export.Dim('batch')}}",
            "module": "declare -1 as the first size of every --input",
        }[kind]
        raise InvalidArgument(
            f"{', '.join(t.describe() for t in fixed)}: the first axis must be a dynamic batch "
            f"axis (Kiln batches requests and checks engines at several batch sizes); {how}"
        )


def _check_dataset(dataset: Dataset, signature: Signature) -> None:
    if len(signature.inputs) != 1:
        raise InvalidArgument(
            f"--dataset feeds one input, this model takes {len(signature.inputs)} "
            f"({', '.join(signature.input_names)}); register it without --dataset (compile "
            "then verifies on random inputs) or combine the inputs into one"
        )
    spec = signature.inputs[0]
    declared = spec.shape[1:]
    fits = len(declared) == len(dataset.input_shape) and all(
        d in (DYNAMIC, s) for d, s in zip(declared, dataset.input_shape, strict=True)
    )
    if not fits or np.dtype(spec.dtype).kind != "f":
        shape = ",".join(str(d) for d in dataset.input_shape)
        raise InvalidArgument(
            f"data set '{dataset.name}' has float32 samples of shape [{shape}]; the model's "
            f"input is {spec.describe()}. Give a data set of the input's shape and type"
        )


def predict(source: LoadedSource, x: np.ndarray, signature: Signature) -> np.ndarray:
    """The source's first output on `x` (fed to its one input), in batches."""
    run = source.reference()
    spec = signature.inputs[0]
    step = min(PREDICT_BATCH, signature.max_batch or PREDICT_BATCH)
    parts = [
        run({spec.name: np.ascontiguousarray(x[i : i + step], dtype=spec.dtype)})[
            signature.outputs[0].name
        ]
        for i in range(0, len(x), step)
    ]
    return np.concatenate(parts)


def test_metrics(task: str, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The source's metrics on the test split, named as the trainer names them."""
    if task == REGRESSION:
        values = outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64)
        error = values - y.astype(np.float64)
        total = float(np.sum((y - y.mean()) ** 2))
        return {
            "test_mae": float(np.mean(np.abs(error))),
            "test_rmse": float(np.sqrt(np.mean(error**2))),
            "test_r2": 1.0 - float(np.sum(error**2)) / total if total > 0 else 0.0,
        }
    return {"test_accuracy": float(np.mean(outputs.argmax(axis=1) == y))}


def _data_config(
    source: LoadedSource, signature: Signature, dataset: Dataset, task: str
) -> tuple[dict[str, Any], dict[str, float]]:
    outputs = predict(source, dataset.test.x, signature)
    if not np.isfinite(outputs).all():
        raise SourceInvalid(
            f"the model returns NaN or infinite values on data set '{dataset.name}'"
        )
    profile = reference_profile(
        dataset.train.x, dataset.input_shape, outputs, dataset.test.y, task=task
    )
    config = {
        "dataset": dataset.name,
        "data_fingerprint": dataset.fingerprint,
        "split": dataset.split_spec.as_dict(),
        "seed": dataset.split_spec.seed,
        "input_name": signature.inputs[0].name,
        "reference": profile,
    }
    return config, test_metrics(task, outputs, dataset.test.y)


def _json_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise InvalidArgument(f"--metrics values must be finite numbers; not: {', '.join(bad)}")
    return dict(metrics)


def register_source(
    registry: Registry,
    name: str,
    source: SourceSpec,
    options: RegisterOptions | None = None,
    *,
    settings: Settings | None = None,
) -> ModelVersion:
    """Check `source`, work out its signature and task, and register it as the next version
    of `name`.

    Raises `SourceInvalid` / `PickleRefused` for files that cannot be used,
    `ModelBuilderNotFound` for a builder that cannot be imported, `InvalidArgument` for
    options that do not fit the model (task, classes, data set shape), and what
    `Registry.register_version` raises.
    """
    options = options or RegisterOptions()
    settings = settings or Settings()
    loaded = load_source(source)
    dataset = None
    if options.dataset:
        dataset = load_dataset(options.dataset, settings, seed=options.seed)
    task, classes = _task_and_classes(loaded.signature, options, dataset)
    max_batch = options.max_batch or loaded.max_batch
    if max_batch is not None and max_batch < 1:
        raise InvalidArgument(f"--max-batch must be at least 1, got {max_batch}")
    signature = _name_outputs(loaded.signature, source.output_names, task).with_max_batch(max_batch)
    _require_batch_axis(signature, source.kind)
    loaded = loaded.renamed(signature)
    config: dict[str, Any] = {"task": task, "class_names": classes}
    ranges = parse_ranges(options.input_ranges, signature.inputs)
    if ranges:
        config["input_ranges"] = {name: list(bounds) for name, bounds in ranges.items()}
    metrics = _json_metrics(options.metrics)
    if dataset is not None:
        _check_dataset(dataset, signature)
        data, measured = _data_config(loaded, signature, dataset, task)
        config |= data
        metrics |= measured  # measured here, from the source itself: these are what gates trust
    with tempfile.TemporaryDirectory(dir=settings.home if settings.home.exists() else None) as tmp:
        stored = source.path
        if loaded.onnx_model is not None and uses_external_data(source.path):
            stored = single_file(loaded.onnx_model, Path(tmp))  # one blob: the graph and weights
        record: dict[str, Any] = {
            "kind": source.kind,
            "filename": source.path.name,
            "sha256": _sha256(stored),
            "registered_by": _who(options.actor),
        }
        if source.kind == "module":
            record |= {"builder": source.builder, "model_args": dict(source.model_args)}
        config |= {"source": record, "signature": signature.to_dict()}
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"--model-arg values must be JSON values: {exc}") from exc
        return registry.register_version(
            name,
            checkpoint=stored,
            config=config,
            metrics=metrics,
            lineage=Lineage(
                dataset=dataset.name if dataset else None,
                data_fingerprint=dataset.fingerprint if dataset else None,
            ),
            description=options.description,
        )
