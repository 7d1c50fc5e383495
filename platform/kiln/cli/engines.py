"""`kiln engines`: which inference backends this host can run, and how to get the others."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.output import JsonOption, emit


def engines(as_json: bool = JsonOption) -> None:
    """List the inference backends, whether each is usable here, and if not, how to get it."""
    from kiln_engines import available_backends, host_info
    from kiln_engines.selection import PREFERENCE

    statuses = available_backends()
    host = host_info()
    payload: dict[str, Any] = {
        "host": host.to_dict(),
        "backends": [s.to_dict() for s in statuses],
        "preference": [f"{kind}/{device}" for kind, device in PREFERENCE],
    }

    def render(console: Console) -> None:
        gpus = ", ".join(g.name for g in host.gpus) or "no NVIDIA GPU"
        table = Table(title=f"inference backends on this host ({host.cpu}, {gpus})")
        table.add_column("backend", style="bold", no_wrap=True)
        table.add_column("usable", no_wrap=True)
        table.add_column("devices", no_wrap=True)
        table.add_column("version", no_wrap=True)
        table.add_column("details", overflow="fold")
        for s in statuses:
            details = s.reason if s.usable else f"{s.reason}; {s.how_to_get or ''}".rstrip("; ")
            table.add_row(
                s.name,
                "[green]yes[/]" if s.usable else "[red]no[/]",
                ", ".join(s.devices) or "-",
                s.version or "-",
                escape(details),
            )
        console.print(table)
        console.print(
            "serving picks the fastest artifact this host can run: "
            "tensorrt > aotinductor (cuda) > onnxruntime > aotinductor (cpu)"
        )

    emit(payload, as_json, render)
