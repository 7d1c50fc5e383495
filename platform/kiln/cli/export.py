"""`kiln export triton`: a version's ONNX engine as an NVIDIA Triton model repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.output import JsonOption, emit
from kiln.errors import InvalidArgument
from kiln.settings import Settings

if TYPE_CHECKING:
    from kiln.serving.triton_export import TritonExport

app = typer.Typer(help="Export Kiln versions for other serving systems.", no_args_is_help=True)

FamilyKind = Literal["onnx", "onnxruntime"]
"""`kiln.serving.triton_export.ONNX_FAMILY`, spelled out so that `kiln --help` imports no
serving code (a test keeps the two equal)."""


@app.command("triton")
def triton(
    reference: Annotated[
        str, typer.Argument(metavar="REF", help="NAME, NAME@ALIAS or NAME:VERSION.")
    ],
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="The model repository (created when missing).", show_default=False
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Triton model name (its directory).", show_default="the model's name"),
    ] = None,
    kind: Annotated[
        FamilyKind | None,
        typer.Option(help="Engine to export.", show_default="onnx, else onnxruntime"),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Most rows per execution; 0 turns batching off. Capped by the engine's own cap.",
            show_default="kiln serve's: KILN_SERVE_MAX_BATCH_SIZE, else 32",
        ),
    ] = None,
    preferred_batch_size: Annotated[
        list[int] | None,
        typer.Option(
            "--preferred-batch-size",
            min=1,
            metavar="N",
            help="A batch size Triton runs at once when it can form it (repeatable).",
            show_default="none: the largest batch it can form, as kiln serve does",
        ),
    ] = None,
    max_queue_delay_us: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="How long a request may wait for a batch to fill, in microseconds.",
            show_default="kiln serve's: KILN_SERVE_MAX_QUEUE_DELAY_US, else 0",
        ),
    ] = None,
    max_queue_size: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Queued requests before Triton rejects more; 0: no bound.",
            show_default="kiln serve's: KILN_SERVE_MAX_QUEUE_SIZE, else 1024",
        ),
    ] = None,
    instances: Annotated[
        int, typer.Option(min=1, help="Model instances Triton runs at once (instance_group).")
    ] = 1,
    instance_kind: Annotated[
        Literal["cpu", "gpu"],
        typer.Option(help="Where the instances run (KIND_CPU or KIND_GPU)."),
    ] = "cpu",
    token_ids: Annotated[
        bool,
        typer.Option(
            "--token-ids",
            help="Export a text model's engine as it is, taking token ids: clients tokenise "
            "with the tokenizer.json written beside the config.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing DIR/NAME (only it).")
    ] = False,
    as_json: bool = JsonOption,
) -> None:
    """Write REF's ONNX engine as model NAME of the Triton model repository DIR.

    Writes DIR/NAME/config.pbtxt (the configuration kiln serve's ModelConfig reports for the
    version, with these batching settings), DIR/NAME/VERSION/model.onnx (the registry's
    verified artifact) and, for a classifier, DIR/NAME/labels.txt (its class names, the
    output's label_filename). Serve it with `tritonserver --model-repository DIR`.
    """
    import kiln.registry
    from kiln.serving.settings import ServingSettings
    from kiln.serving.triton_export import TritonOptions, export_triton

    given: dict[str, Any] = {
        "max_batch_size": max_batch_size,
        "max_queue_delay_us": max_queue_delay_us,
        "max_queue_size": max_queue_size,
    }
    try:
        serving = ServingSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidArgument(f"invalid batching options: {problems}") from None
    options = TritonOptions(
        name=name,
        kind=kind,
        instances=instances,
        instance_kind=instance_kind,
        preferred_batch_sizes=tuple(preferred_batch_size or ()),
        token_ids=token_ids,
        force=force,
    )
    with kiln.registry.open(settings=Settings()) as registry:
        result = export_triton(registry, reference, directory, serving, options)
    payload = _payload(result, directory)
    emit(payload, as_json, lambda console: _render(console, result, payload))


def _payload(result: TritonExport, directory: Path) -> dict[str, Any]:
    d = result.description

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    def path(p: Path | None) -> str | None:
        return None if p is None else str(p)

    return {
        "source": result.version.ref,
        "model": d.name,
        "version": d.version,
        "kind": result.artifact.kind.value,
        "sha256": result.artifact.sha256,
        "repository": str(directory),
        "model_dir": str(result.model_dir),
        "config": str(result.config_path),
        "engine": str(result.engine_path),
        "labels": path(result.labels_path),
        "labels_output": result.labels_output,
        "tokenizer": path(result.tokenizer_path),
        "platform": d.platform,
        "max_batch_size": d.max_batch_size,
        "preferred_batch_sizes": list(result.preferred_batch_sizes),
        "max_queue_delay_us": d.max_queue_delay_us,
        "max_queue_size": d.max_queue_size,
        "instances": d.instances,
        "instance_kind": result.instance_kind,
        "inputs": tensors(d.inputs),
        "outputs": tensors(d.outputs),
        "replaced": result.replaced,
        "notes": list(result.notes),
        "run": f"tritonserver --model-repository {directory}",
    }


def _render(console: Console, result: TritonExport, payload: dict[str, Any]) -> None:
    d = result.description
    verb = "replaced" if result.replaced else "wrote"
    console.print(
        f"{verb} Triton model [bold]{escape(d.name)}[/] version {d.version} from "
        f"{escape(payload['source'])} ({payload['kind']}, sha256 {payload['sha256'][:12]})",
        highlight=False,
    )
    table = Table(box=box.SIMPLE_HEAD, show_header=True)
    for column in ("tensor", "role", "datatype", "shape"):
        table.add_column(column)
    for role, specs in (("input", d.inputs), ("output", d.outputs)):
        for s in specs:
            label = " (labels.txt)" if s.name == result.labels_output else ""
            table.add_row(escape(s.name), role + label, s.datatype, str(list(s.shape)))
    console.print(table)
    batching = (
        f"max_batch_size {d.max_batch_size}, queue delay {d.max_queue_delay_us} µs, queue "
        f"size {d.max_queue_size or 'unbounded'}"
        + (
            f", preferred {payload['preferred_batch_sizes']}"
            if result.preferred_batch_sizes
            else ""
        )
        if d.max_batch_size
        else "no batching (max_batch_size 0)"
    )
    console.print(f"batching: {batching}; {d.instances} x {result.instance_kind} instance(s)")
    for key in ("config", "engine", "labels", "tokenizer"):
        if payload[key]:
            console.print(f"  {key:9} {escape(payload[key])}", highlight=False)
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    console.print(f"serve it with:\n  {escape(payload['run'])}", highlight=False)
