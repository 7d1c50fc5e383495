"""`kiln bento export`: put a version's engine into BentoML's model store for `bentoml build`."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.console import Console

from kiln.cli.output import JsonOption, emit
from kiln.settings import Settings

app = typer.Typer(help="Package Kiln models for BentoML.", no_args_is_help=True)

EngineKind = Literal["onnxruntime", "onnx", "aotinductor", "tensorrt"]
"""`kiln.serving.bento.store.EXPORTABLE`, spelled out so that the CLI starts without importing
BentoML (a test keeps the two equal)."""


@app.command("export")
def export(
    reference: Annotated[
        str, typer.Argument(metavar="REF", help="NAME, NAME@ALIAS or NAME:VERSION.")
    ],
    kind: Annotated[EngineKind, typer.Option(help="The engine to package.")] = "onnxruntime",
    as_json: bool = JsonOption,
) -> None:
    """Export REF's engine and config to BentoML's model store as kiln-NAME:vVERSION."""
    import kiln.registry
    from kiln.serving.bento.store import export_version

    with kiln.registry.open(settings=Settings()) as registry:
        result = export_version(registry, reference, kind)
    build = f"KILN_BENTO_MODEL={result.tag} bentoml build -f deploy/bentofile.yaml ."
    payload = {
        "tag": result.tag,
        "kind": result.kind,
        "sha256": result.sha256,
        "path": result.path,
        "created": result.created,
        "build": build,
    }

    def render(console: Console) -> None:
        verb = "exported" if result.created else "already in the store:"
        console.print(f"{verb} [bold]{result.tag}[/] ({result.kind}, sha256 {result.sha256[:12]})")
        console.print(f"build a Bento with:\n  {build}")

    emit(payload, as_json, render)
