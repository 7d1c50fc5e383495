"""`kiln register NAME`: register a model trained outside Kiln (ONNX, PyTorch module or
exported program) as the next version of NAME; thin over `kiln.sources.register_source`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from kiln.cli.models import open_registry
from kiln.cli.output import JsonOption, emit, err_console
from kiln.cli.train import parse_model_args
from kiln.errors import InvalidArgument
from kiln.settings import Settings

Task = Literal["classification", "regression"]


def _one_source(onnx: Path | None, module: str | None, exported: Path | None) -> str:
    given = [n for n, v in (("--onnx", onnx), ("--module", module), ("--exported", exported)) if v]
    if len(given) != 1:
        raise InvalidArgument(
            "give exactly one source: --onnx model.onnx, --module pkg.mod:builder --weights "
            "w.safetensors --input NAME:DATATYPE:SHAPE, or --exported program.pt2"
            + (f" (got {', '.join(given)})" if given else "")
        )
    return given[0].removeprefix("--")


def _classes(classes: str | None, classes_file: Path | None) -> tuple[str, ...]:
    if classes and classes_file:
        raise InvalidArgument("give --classes or --classes-file, not both")
    if classes_file is not None:
        try:
            lines = classes_file.read_text().splitlines()
        except OSError as exc:
            raise InvalidArgument(f"cannot read --classes-file {classes_file}: {exc}") from exc
        return tuple(line.strip() for line in lines if line.strip())
    return tuple(c.strip() for c in classes.split(",")) if classes else ()


def _metrics(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read --metrics {path} as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument(
            f'--metrics {path} must hold a JSON object, e.g. {{"test_rmse": 3.1}}'
        )
    return data


def register(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Model name (created on first use).")],
    onnx: Annotated[
        Path | None, typer.Option("--onnx", help="An ONNX model file.", rich_help_panel="Source")
    ] = None,
    module: Annotated[
        str | None,
        typer.Option(
            "--module",
            help="A builder package.module:function returning the nn.Module.",
            rich_help_panel="Source",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="The module's weights (.safetensors).", rich_help_panel="Source"),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--model-arg",
            help="Builder argument key=value (JSON values); repeat.",
            rich_help_panel="Source",
        ),
    ] = None,
    exported: Annotated[
        Path | None,
        typer.Option(
            "--exported",
            help="A torch.export program (torch.export.save).",
            rich_help_panel="Source",
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="NAME:DATATYPE:SHAPE, e.g. features:FP32:-1,10 (-1: dynamic); repeat in "
            "forward()'s order. Required with --module; renames an exported program's inputs.",
        ),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option("--output", help="Output names in order; repeat. Default: by task."),
    ] = None,
    input_range: Annotated[
        list[str] | None,
        typer.Option(
            "--input-range",
            help="NAME=LOW:HIGH (inclusive): the values compile's random inputs take without "
            "--dataset, e.g. ids=0:19 for an embedding of 20 rows; repeat.",
        ),
    ] = None,
    task: Annotated[
        Task | None,
        typer.Option(
            help="What the first output is.", show_default="classification when wider than 1"
        ),
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names, comma-separated, in output order.")
    ] = None,
    classes_file: Annotated[
        Path | None, typer.Option("--classes-file", help="Class names, one per line.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Data set for held-out checks, the drift reference, metrics and int8 "
            "calibration (kiln datasets list, or a .parquet file)."
        ),
    ] = None,
    metrics: Annotated[
        Path | None, typer.Option(help="A JSON object of metrics to record.")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="Largest batch the model accepts.")
    ] = None,
    description: Annotated[str, typer.Option(help="A note stored with the version.")] = "",
    actor: Annotated[
        str | None, typer.Option(help="Who is registering.", show_default="the OS user")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Register a model trained outside Kiln as the next version of NAME.

    The source is checked before anything is stored (ONNX checker, builder and weights, a
    run of the module on the declared inputs); pickle files are refused. Then compile it:
    `kiln compile NAME:VERSION`. Exits 2 when the source or an option is not usable.
    """
    from kiln.sources import RegisterOptions, SourceSpec, parse_inputs, register_source

    kind = _one_source(onnx, module, exported)
    if kind == "module" and (weights is None or not inputs):
        raise InvalidArgument(
            "--module needs --weights w.safetensors and its inputs, e.g. --input "
            "features:FP32:-1,10 (one --input per forward() argument)"
        )
    if kind != "module" and (weights is not None or model_arg):
        raise InvalidArgument("--weights and --model-arg go with --module")
    path = {"onnx": onnx, "exported": exported, "module": weights}[kind]
    assert path is not None
    spec = SourceSpec(
        kind,  # type: ignore[arg-type]  # one of KINDS, by _one_source
        path,
        builder=module,
        model_args=parse_model_args(model_arg or []),
        inputs=parse_inputs(inputs or []),
        output_names=tuple(outputs or ()),
    )
    options = RegisterOptions(
        task=task,
        class_names=_classes(classes, classes_file),
        dataset=dataset,
        metrics=_metrics(metrics),
        max_batch=max_batch,
        description=description,
        actor=actor,
        input_ranges=tuple(input_range or ()),
    )
    checking = err_console.status(f"checking the {kind} source", spinner="dots")
    with open_registry() as registry, checking:
        version = register_source(registry, name, spec, options, settings=Settings())

    def render(console: Console) -> None:
        config = version.config
        console.print(f"registered [bold]{escape(version.ref)}[/] ({kind}, {config['task']})")
        from kiln_engines import Signature

        console.print(f"  signature: {escape(Signature.from_dict(config['signature']).describe())}")
        if config.get("dataset"):
            shown = ", ".join(
                f"{k} {v:.4g}"
                for k, v in sorted(version.metrics.items())
                if isinstance(v, int | float)
            )
            console.print(f"  data set: {escape(str(config['dataset']))}; {escape(shown)}")
        else:
            console.print("  no --dataset: compile will verify on random inputs only")
        console.print(f"  next: kiln compile {escape(version.ref)}")

    emit(version.to_dict(), as_json, render)
