"""Building blocks of Kiln's self-contained HTML pages: PNG plots embedded as base64, tables,
the page itself and its atomic write. The evaluation report and the demo page use them."""

from __future__ import annotations

import base64
import html
import importlib
import io
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.errors import Unavailable
from kiln.evaluate.results import AccuracyPoint, ErrorPoint, Evaluation


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise Unavailable(
            "the HTML report needs matplotlib: pip install 'kiln[train]' (or matplotlib), "
            "or leave out --report"
        ) from exc
    return plt


def png(draw: Callable[[Any], None], width: float = 7.5, height: float = 3.2) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], flag: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cls = ' class="flag"' if flag is not None and row[flag] is True else ""
        cells = "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def series_by_version(
    points: Sequence[AccuracyPoint | ErrorPoint],
) -> dict[Any, tuple[list[Any], list[Any]]]:
    series: dict[Any, tuple[list[Any], list[Any]]] = {}
    for p in points:
        xs, ys = series.setdefault(p.version, ([], []))
        xs.append(p.start)
        ys.append(p.accuracy if isinstance(p, AccuracyPoint) else p.rmse)
    return series


def time_axis(ax: Any, report: Evaluation) -> None:
    """The window on the x axis, labelled in UTC (a lone point would get a year-wide axis)."""
    mdates: Any = importlib.import_module("matplotlib.dates")  # untyped library
    ax.set_xlim(report.since, report.until)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz="UTC"))
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_xlabel("UTC")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}tr.flag td{background:#fbe3e0}
.drift{color:#c0392b;font-weight:bold}.ok{color:#1e8449;font-weight:bold}img{max-width:100%}
"""


def page(title: str, parts: Sequence[str]) -> str:
    """A self-contained HTML page of `parts` (HTML fragments) in the report's style."""
    body = "\n".join(parts)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_page(text: str, path: Path) -> Path:
    """Write the page `text` to `path` atomically (a reader never sees half a page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)
    return path


def series_plot(
    report: Evaluation,
    points: Sequence[AccuracyPoint | ErrorPoint],
    ylabel: str,
    title: str,
    ylim: tuple[float | None, float | None],
) -> str:
    """One line per version of `points` over the report's window."""

    def draw(ax: Any) -> None:
        for version, (xs, ys) in series_by_version(points).items():
            ax.plot(xs, ys, marker="o", label=f"version {version}")
        time_axis(ax, report)
        ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if points:
            ax.legend()

    return png(draw)
