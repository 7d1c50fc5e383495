"""The compile core: (module, signature, real samples) ► verified engine files and a report.

Nothing here knows about the registry or checkpoints (see `kiln.compile.registered`): tests and
benchmarks call `compile_module` with any `nn.Module`. For each requested target the core
builds the engine files, loads each through `kiln_engines.load` exactly as serving will,
checks parity against the module and, when parity passes, measures latency and throughput.
A target that fails to build or fails parity is reported with the reason and never marked
passed; one this host cannot have (TensorRT without a GPU) is reported as unavailable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.compile.export import example_inputs, export_onnx, export_program
from kiln.compile.parity import TEXT_THRESHOLDS, ParityReport, check_parity, random_inputs
from kiln.compile.performance import Batches, Performance, measure, tiled
from kiln.compile.provenance import hardware
from kiln.compile.reference import EagerEngine, reference_outputs
from kiln.compile.targets import BUILDERS, PRECISIONS, TARGETS, BuildContext, TargetUnavailable
from kiln.compile.text import TextModel, random_text_inputs, timing_batches
from kiln.errors import EngineBuildFailed, InvalidArgument, KilnError, ReferenceFailed
from kiln_engines import Engine, EngineError, Signature, load

Progress = Callable[[str], None]

ONNX_TARGETS = ("onnxruntime", "tensorrt")
"""Targets built from the ONNX export; asking for one at fp32 also yields the verified `onnx`
artifact (the export itself, which TensorRT plans are rebuilt from)."""


@dataclass(frozen=True)
class CompileOptions:
    targets: tuple[str, ...] = ("onnxruntime",)
    precision: str = "fp32"
    max_batch: int = 64
    threads: int = 1
    """CPU threads for the engines while verifying and measuring them."""
    parity_samples: int = 512
    random_samples: int = 128
    calibration_samples: int = 512
    measure_seconds: float = 1.0
    """Time budget per measurement (latency, throughput); 0 skips measuring."""
    cache_dir: Path | None = None
    """TensorRT's timing cache lives here (Kiln: KILN_HOME/cache)."""
    transformer_fusions: bool | None = None
    """onnxruntime's transformer fusions for transformer text models: None (default) keeps
    the fused graph only when attention was fused (else onnxruntime's own optimiser does as
    well on the plain export); True keeps whatever was fused; False skips them."""

    def validate(self) -> None:
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise InvalidArgument(
                f"unknown target(s) {', '.join(unknown) or '(none)'}; targets: "
                f"{', '.join(TARGETS)} or all"
            )
        if self.precision not in PRECISIONS:
            raise InvalidArgument(
                f"unknown precision '{self.precision}'; precisions: {', '.join(PRECISIONS)}"
            )
        if not 1 <= self.max_batch <= 65536:
            raise InvalidArgument(f"--max-batch must be in 1..65536, got {self.max_batch}")
        if self.threads < 1:
            raise InvalidArgument(f"threads must be >= 1, got {self.threads}")
        if self.parity_samples < 1 or self.random_samples < 1:
            raise InvalidArgument("parity needs at least one held-out and one random sample")


@dataclass
class TargetResult:
    kind: str
    status: str
    """"passed", "failed" (build error or parity failure) or "unavailable" on this host."""
    reason: str | None = None
    device: str | None = None
    path: Path | None = None
    parity: ParityReport | None = None
    performance: Performance | None = None
    target: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def artifact_report(self, precision: str, signature: Signature) -> dict[str, Any]:
        """What the registry records with the artifact."""
        return {
            "precision": precision,
            "signature": signature.to_dict(),
            "parity": self.parity.to_dict() if self.parity else None,
            "performance": self.performance.to_dict() if self.performance else None,
            "measured_on": hardware(),
            "build": {**self.build, "seconds": round(self.build_seconds, 2)},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "device": self.device,
            "status": self.status,
            "reason": self.reason,
            "parity": self.parity.to_dict() if self.parity else None,
            "performance": self.performance.to_dict() if self.performance else None,
            "target": self.target,
            "libraries": self.libraries,
            "build": self.build,
            "build_seconds": round(self.build_seconds, 2),
        }


@dataclass(frozen=True)
class Speedup:
    """A compiled engine against PyTorch eager on the same host and threads."""

    latency_batch1: float
    """Eager's batch-1 p50 latency divided by the engine's."""
    throughput_max_batch: float
    """The engine's throughput at the maximum batch divided by eager's."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CompileReport:
    signature: Signature
    precision: str
    max_batch: int
    results: list[TargetResult]
    eager: Performance | None = None
    """PyTorch eager on the same host and threads: the baseline for speed-ups."""
    task: str = "classification"
    """What parity judged the outputs as (`kiln.compile.parity`)."""
    reference: str = "pytorch eager (fp32)"
    """What computed the reference outputs every engine was compared with."""

    def speedup(self, result: TargetResult) -> Speedup | None:
        """`result` against eager; None when either was not measured."""
        if self.eager is None or result.performance is None:
            return None
        perf = result.performance
        return Speedup(
            latency_batch1=round(self.eager.latency_ms_p50 / perf.latency_ms_p50, 2),
            throughput_max_batch=round(perf.throughput_per_s / self.eager.throughput_per_s, 2),
        )

    def to_dict(self) -> dict[str, Any]:
        results = []
        for r in self.results:
            speedup = self.speedup(r)
            results.append({**r.to_dict(), "speedup": speedup.to_dict() if speedup else None})
        return {
            "signature": self.signature.to_dict(),
            "precision": self.precision,
            "max_batch": self.max_batch,
            "eager": self.eager.to_dict() if self.eager else None,
            "task": self.task,
            "reference": self.reference,
            "results": results,
        }


def _rows(samples: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[:count]) for k, v in samples.items()}


def _calibration_batches(
    samples: Mapping[str, np.ndarray] | None, count: int, batch: int
) -> list[dict[str, np.ndarray]]:
    if samples is None:
        return []
    rows = _rows(samples, count)
    total = next(iter(rows.values())).shape[0]
    return [
        {k: v[start : start + batch] for k, v in rows.items()}
        for start in range(0, total - batch + 1, batch)
    ]


References = tuple[tuple[dict[str, np.ndarray], dict[str, np.ndarray]], ...]
"""(inputs, reference outputs) for the held-out set, then for the random set."""


def reference_pairs(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    signature: Signature,
    held_out: Mapping[str, np.ndarray],
    options: CompileOptions,
    text: TextModel | None = None,
) -> References:
    """The held-out and random inputs parity uses, with `run`'s outputs for them; a text
    model's random inputs are token sequences its tokenizer could have produced."""
    real = _rows(held_out, options.parity_samples)
    if text is not None:
        noise = random_text_inputs(text, real, options.random_samples)
    else:
        noise = random_inputs(signature, real, options.random_samples)
    return ((real, run(real)), (noise, run(noise)))


@dataclass(frozen=True)
class _Timing:
    """What speed is measured on: batches of held-out inputs, and their sequence axis."""

    batches: Batches
    sequence_axis: int | None

    @classmethod
    def of(cls, samples: Mapping[str, np.ndarray], max_batch: int, text: bool) -> _Timing:
        if text:
            return cls(timing_batches(samples, max_batch), 1)
        return cls(tiled(samples, max_batch), None)

    def measure(self, engine: Engine, options: CompileOptions) -> Performance:
        return measure(
            engine,
            self.batches,
            threads=options.threads,
            budget_s=options.measure_seconds,
            sequence_axis=self.sequence_axis,
        )


def compile_module(  # noqa: PLR0913
    module: nn.Module,
    signature: Signature,
    held_out: Mapping[str, np.ndarray],
    workdir: Path,
    options: CompileOptions,
    *,
    calibration: Mapping[str, np.ndarray] | None = None,
    progress: Progress = lambda _: None,
    task: str = "classification",
    program: torch.export.ExportedProgram | None = None,
    text: TextModel | None = None,
) -> CompileReport:
    """Build, verify and measure every requested target for `module`.

    `held_out` maps each input name to real samples the model was not trained on; `calibration`
    (training inputs) feeds INT8 calibration. Engine files are written under `workdir`.
    `task` decides how parity judges the outputs; `program` is the module already captured
    (a user's exported program), else it is captured here. `text` marks a text model
    (`kiln.compile.text`): its random inputs, timing lengths, int8 and parity thresholds
    are a text model's. Raises `EngineBuildFailed` only when the model cannot be captured at
    all; per-target problems are reported in the results.
    """
    options.validate()
    module = module.eval()
    signature = signature.with_max_batch(options.max_batch)
    torch.set_num_threads(options.threads)
    workdir.mkdir(parents=True, exist_ok=True)

    example = example_inputs(signature, held_out)
    if program is None:
        progress("capturing the model with torch.export")
        program = export_program(module, signature, example, max_batch=options.max_batch)
    elif program.example_inputs is None:
        # Loaded without its pickled example inputs (kiln.sources.program); AOTInductor
        # needs some, and rows of the held-out data are as good.
        program.example_inputs = (example, {})

    progress("computing reference outputs (PyTorch, fp32)")
    try:
        references = reference_pairs(
            lambda inputs: reference_outputs(module, signature, inputs),
            signature,
            held_out,
            options,
            text,
        )
    except Exception as exc:  # the user's forward() raised: say so, do not crash
        raise ReferenceFailed(
            f"the model itself fails on the inputs parity compares engines on: "
            f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        ) from exc

    targets: list[str] = list(options.targets)
    onnx_path = workdir / "model.onnx"
    onnx_error: str | None = None
    if any(t in ONNX_TARGETS for t in targets):
        progress("exporting to ONNX and checking it")
        try:
            export_onnx(program, signature, onnx_path)
            if options.precision == "fp32":  # the plain export is an fp32 model
                targets.insert(0, "onnx")
        except EngineBuildFailed as exc:
            onnx_error = exc.message

    ctx = build_context(workdir, signature, onnx_path, options, calibration, text)
    ctx.module, ctx.program, ctx.example = module, program, example
    results = build_targets(targets, ctx, references, options, progress, task, onnx_error)

    eager = None
    if options.measure_seconds > 0 and any(r.performance for r in results):
        progress("measuring PyTorch eager for comparison")
        with EagerEngine(module, signature) as baseline:
            timing = _Timing.of(references[0][0], options.max_batch, text is not None)
            eager = timing.measure(baseline, options)
    return CompileReport(signature, options.precision, options.max_batch, results, eager, task=task)


def build_context(
    workdir: Path,
    signature: Signature,
    onnx_path: Path,
    options: CompileOptions,
    calibration: Mapping[str, np.ndarray] | None,
    text: TextModel | None = None,
) -> BuildContext:
    """The builders' context without a PyTorch model (the caller adds one when it has it)."""
    return BuildContext(
        workdir=workdir,
        module=None,
        signature=signature,
        program=None,
        example=(),
        onnx_path=onnx_path,
        precision=options.precision,
        max_batch=options.max_batch,
        threads=options.threads,
        calibration=_calibration_batches(
            calibration, options.calibration_samples, min(32, options.max_batch)
        ),
        cache_dir=options.cache_dir,
        text=text,
        transformer_fusions=options.transformer_fusions,
    )


def build_targets(
    targets: list[str],
    ctx: BuildContext,
    references: References,
    options: CompileOptions,
    progress: Progress,
    task: str,
    onnx_error: str | None = None,
) -> list[TargetResult]:
    """Build and verify each of `targets`; ONNX-based ones fail with `onnx_error` if set."""
    results: list[TargetResult] = []
    for kind in targets:
        if onnx_error is not None and kind in ONNX_TARGETS:
            results.append(TargetResult(kind, "failed", onnx_error))
            continue
        results.extend(_build_target(kind, ctx, references, options, progress, task))
    return results


def _build_target(
    kind: str,
    ctx: BuildContext,
    references: References,
    options: CompileOptions,
    progress: Progress,
    task: str,
) -> list[TargetResult]:
    progress(f"building {kind} ({options.precision})")
    start = time.perf_counter()
    try:
        built = BUILDERS[kind](ctx)
    except TargetUnavailable as exc:
        return [TargetResult(kind, "unavailable", str(exc))]
    except (KilnError, EngineError) as exc:
        return [TargetResult(kind, "failed", f"build failed: {exc}")]
    seconds = time.perf_counter() - start
    results = []
    for item in built:
        result = TargetResult(
            item.kind,
            "failed",
            device=item.device,
            path=item.path,
            target=item.target,
            libraries=item.libraries,
            build=item.build,
            build_seconds=seconds,
        )
        progress(f"verifying {item.kind} on {item.device} against the checkpoint")
        try:
            with load(item.path, item.kind, item.options) as engine:
                result.parity = check_parity(
                    engine,
                    options.precision,
                    references[0],
                    references[1],
                    options.max_batch,
                    task,
                    TEXT_THRESHOLDS if ctx.text is not None else None,
                )
                if not result.parity.passed:
                    result.reason = "parity failed: " + "; ".join(result.parity.failures)
                else:
                    result.status = "passed"
                    if options.measure_seconds > 0:
                        progress(f"measuring {item.kind} on {item.device}")
                        timing = _Timing.of(
                            references[0][0], options.max_batch, ctx.text is not None
                        )
                        result.performance = timing.measure(engine, options)
        except EngineError as exc:
            result.reason = f"the built engine does not load or run: {exc}"
        results.append(result)
    return results
