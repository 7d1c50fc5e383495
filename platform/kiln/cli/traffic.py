"""`kiln traffic stats`: requests, errors, throughput and latency from the request log."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.models import model_name
from kiln.cli.output import JsonOption, emit
from kiln.settings import Settings

app = typer.Typer(help="Inspect the production request log.", no_args_is_help=True)

SinceOption = typer.Option(
    "--since", help="Window start: a duration back from now (24h, 30m, 7d) or an ISO time (UTC)."
)


def _us(value: Any) -> str:
    return "-" if value is None else f"{value / 1000:.2f}"


@app.command("stats")
def stats(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Model name.")],
    since: Annotated[str, SinceOption] = "24h",
    as_json: bool = JsonOption,
) -> None:
    """Requests, error rate, throughput over time and latency p50/p95/p99 per version and route."""
    from kiln.traffic import Window, log_store, traffic_stats

    name = model_name(name, "kiln traffic stats")
    # Skipped files are logged (a warning naming each) by the reader, and listed in the JSON.
    report = traffic_stats(log_store(Settings()), name, Window.last(since))

    def render(console: Console) -> None:
        rate = report["error_rate"]
        console.print(
            f"[bold]{name}[/]: {report['requests']} requests, {report['errors']} errors"
            + (f" ({rate:.2%})" if rate is not None else "")
            + f" since {report['since']:%Y-%m-%d %H:%M:%S} UTC"
        )
        table = Table(title="by version and route (latency of answered requests, ms)")
        for col in ("version", "route", "requests", "errors", "req/s", "p50", "p95", "p99",
                    "queue p50", "batch"):  # fmt: skip
            table.add_column(col, justify="right")
        for g in report["by_version_route"]:
            table.add_row(
                "-" if g["version"] is None else str(g["version"]),
                g["route"],
                str(g["requests"]),
                f"{g['errors']} ({g['error_rate']:.1%})",
                "-" if g["requests_per_s"] is None else f"{g['requests_per_s']:.1f}",
                _us(g["latency_p50_us"]),
                _us(g["latency_p95_us"]),
                _us(g["latency_p99_us"]),
                _us(g["queue_p50_us"]),
                "-" if g["mean_batch_size"] is None else f"{g['mean_batch_size']:.1f}",
            )
        console.print(table)
        over = Table(title=f"over time (per {report['bucket']}, UTC)")
        for col in ("start", "version", "requests", "errors", "req/s", "p95 ms"):
            over.add_column(col, justify="right")
        for p in report["over_time"]:
            over.add_row(
                f"{p['start']:%m-%d %H:%M:%S}",
                "-" if p["version"] is None else str(p["version"]),
                str(p["requests"]),
                str(p["errors"]),
                f"{p['requests_per_s']:.2f}",
                _us(p["latency_p95_us"]),
            )
        console.print(over)
        if report["statuses"]:
            console.print(
                "statuses: " + ", ".join(f"{k} {v}" for k, v in report["statuses"].items())
            )
        unmeasured = report["skipped_rows"]["answered_without_latency"]
        if unmeasured:
            console.print(
                f"{unmeasured} answered request(s) logged without a latency (older files)"
            )
        if report["skipped_files"]:
            console.print(
                f"skipped {len(report['skipped_files'])} unreadable or damaged file(s): "
                + "; ".join(
                    f"{escape(path)} ({escape(why)})"
                    for path, why in report["skipped_files"].items()
                ),
                highlight=False,
            )

    emit(report, as_json, render)
