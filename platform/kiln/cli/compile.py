"""`kiln compile REF`: build engines for a registered version, verify them, register them."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli.output import JsonOption, emit, err_console
from kiln.errors import EngineBuildFailed, InvalidArgument, KilnError, ParityFailed, Unavailable
from kiln.settings import Settings

if TYPE_CHECKING:  # kiln.compile imports torch: only commands that compile may pay for that
    from kiln.compile import RegisteredCompile
    from kiln.compile.parity import OutputParity


class Target(StrEnum):
    """What `--target` builds: `kiln.compile.TARGETS` and "all", spelled out so that the CLI
    starts without importing torch (a test keeps them equal). An Enum, not a Literal: typer
    takes repeatable options only of plain or Enum types."""

    onnxruntime = "onnxruntime"
    aotinductor = "aotinductor"
    tensorrt = "tensorrt"
    all = "all"


TARGET_CHOICES = tuple(t.value for t in Target)
Precision = Literal["fp32", "fp16", "bf16", "int8"]
"""`kiln.compile.PRECISIONS`, spelled out for the same reason."""


def _diff(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return "100%" if value == 1.0 else f"{value:.1%}"


def _worst(outputs: Sequence[OutputParity]) -> OutputParity | None:
    return max(outputs, key=lambda p: p.max_abs_diff / p.scale, default=None)


def parity_table(outcome: RegisteredCompile) -> Table:
    """One row per engine: its status and how closely it matches the checkpoint (or, for a
    registered source, the source). With several outputs, the worst output is shown."""
    source = (outcome.version.config.get("source") or {}).get("kind")
    against = f"the {source} source" if source else "the checkpoint"
    title = f"{outcome.version.ref} ({outcome.report.precision}): parity with {against}"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("artifact", "device", "status"):
        table.add_column(column, no_wrap=True)
    for column in ("Δ held-out", "top-1", "Δ random", "top-1"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in outcome.report.results:
        held = _worst(r.parity.held_out) if r.parity else None
        rand = _worst(r.parity.random) if r.parity else None
        style = {"passed": "green", "failed": "red"}.get(r.status, "yellow")
        table.add_row(
            r.kind,
            r.device or "-",
            f"[{style}]{'registered' if outcome.artifact_of(r) else r.status}[/]",
            _diff(held.max_abs_diff if held else None),
            _pct(held.top1_agreement if held else None),
            _diff(rand.max_abs_diff if rand else None),
            _pct(rand.top1_agreement if rand else None),
        )
    return table


def speed_table(outcome: RegisteredCompile) -> Table | None:
    """Latency and throughput of each verified engine next to PyTorch eager on this host."""
    report = outcome.report
    eager = report.eager
    if eager is None:
        return None
    title = f"speed on this host ({eager.threads} threads)"
    if eager.sequence_lengths is not None:  # text: measured at the texts' own lengths
        one, full = eager.sequence_lengths
        title += f"; tokens: {one} at b=1, {full} at b={report.max_batch}"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("engine", "device"):
        table.add_column(column, no_wrap=True)
    for column in ("b=1 ms", "vs eager", f"b={report.max_batch} /s", "vs eager"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_row(
        "pytorch eager",
        "cpu",
        f"{eager.latency_ms_p50:.3f}",
        "1.00x",
        f"{eager.throughput_per_s:,.0f}",
        "1.00x",
    )
    for r in report.results:
        perf, speed = r.performance, report.speedup(r)
        if perf and speed:
            table.add_row(
                r.kind,
                r.device,
                f"{perf.latency_ms_p50:.3f}",
                f"{speed.latency_batch1:.2f}x",
                f"{perf.throughput_per_s:,.0f}",
                f"{speed.throughput_max_batch:.2f}x",
            )
    return table


def render(outcome: RegisteredCompile, console: Console) -> None:
    console.print(parity_table(outcome))
    speed = speed_table(outcome)
    if speed is not None:
        console.print(speed)
    for r in outcome.report.results:
        if r.reason:
            console.print(f"[bold]{r.kind}[/]: {escape(r.reason)}", soft_wrap=True)
    for note in outcome.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)


def failure_for(outcome: RegisteredCompile, explicit: bool) -> KilnError | None:
    """The error that makes the command exit non-zero, or None when everything asked for passed."""
    results = outcome.report.results
    failed = [r for r in results if r.status == "failed"]
    parity = [r for r in failed if r.parity is not None]
    if parity:
        kinds = ", ".join(f"{r.kind} ({r.device})" for r in parity)
        return ParityFailed(
            f"{kinds} did not match the checkpoint and were not registered; see the report "
            "above. Try --precision fp32, or another target"
        )
    if failed:
        reasons = "; ".join(f"{r.kind}: {r.reason}" for r in failed)
        return EngineBuildFailed(f"not registered: {reasons}")
    missing = [r for r in results if r.status == "unavailable"]
    if explicit and missing:
        return Unavailable("; ".join(f"{r.kind}: {r.reason}" for r in missing))
    if not any(outcome.artifact_of(r) for r in results):
        return Unavailable("no target could be built on this host (kiln engines)")
    return None


def compile_ref(
    ref: str,
    targets: Sequence[str],
    precision: str = "fp32",
    max_batch: int = 64,
    threads: int = 0,
    parity_samples: int = 512,
) -> tuple[RegisteredCompile, KilnError | None]:
    """Compile `ref` with progress on stderr; return what was compiled and the error that
    should end the command (None when everything asked for was registered). Prints nothing on
    stdout, so `kiln train --compile` can embed the report in its own output.
    """
    import kiln.registry
    from kiln.compile import TARGETS, CompileOptions, compile_version

    unknown = [t for t in targets if t not in TARGET_CHOICES]
    if unknown:
        raise InvalidArgument(
            f"unknown --target {', '.join(unknown)}; choose from {', '.join(TARGET_CHOICES)}"
        )
    settings = Settings()
    explicit = "all" not in targets
    chosen = tuple(TARGETS) if not explicit else tuple(dict.fromkeys(targets))
    options = CompileOptions(
        targets=chosen,
        precision=precision,
        max_batch=max_batch,
        threads=threads or settings.thread_count(),
        parity_samples=parity_samples,
    )
    options.validate()
    with kiln.registry.open(settings=settings) as registry:
        registry.resolve(ref)  # a bad reference fails before the spinner starts
        with err_console.status("compiling", spinner="dots") as status:

            def progress(message: str) -> None:
                err_console.print(f"[dim]· {escape(message)}[/]", highlight=False)
                status.update(message)

            outcome = compile_version(registry, ref, options, settings, progress=progress)
    return outcome, failure_for(outcome, explicit)


def compile_command(
    ref: Annotated[
        str,
        typer.Argument(metavar="REF", help="Model reference: name, name:VERSION or name@ALIAS."),
    ],
    target: Annotated[
        list[Target] | None,
        typer.Option(
            "--target", "-t", help="What to build; repeat for several.", show_default="onnxruntime"
        ),
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option(
            help="fp32; fp16/bf16 (aotinductor, tensorrt); int8 (onnxruntime: dynamic "
            "quantisation for text models, calibrated on training data otherwise; tensorrt)."
        ),
    ] = "fp32",
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Largest batch the engines accept.")
    ] = 64,
    threads: Annotated[
        int, typer.Option(help="CPU threads for verifying and timing; 0 = KILN_THREADS or all.")
    ] = 0,
    parity_samples: Annotated[
        int, typer.Option("--parity-samples", help="Held-out samples compared with the checkpoint.")
    ] = 512,
    as_json: bool = JsonOption,
) -> None:
    """Build engines for a version, check them against the checkpoint, register those that pass.

    Each artifact records its parity report (held-out and random inputs), the library
    versions and hardware, and latency at batch 1 and throughput at --max-batch on this host.
    Exits 2 when a target fails to build or fails parity, or is named but cannot be built here.
    """
    targets = [t.value for t in target] if target else ["onnxruntime"]
    outcome, error = compile_ref(ref, targets, precision, max_batch, threads, parity_samples)
    emit(outcome.to_dict(), as_json, lambda console: render(outcome, console))
    if error is not None:
        raise error
