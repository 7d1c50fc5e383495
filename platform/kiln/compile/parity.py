"""Parity: does a compiled engine compute the same function as the checkpoint?

An engine is compared with the PyTorch module (fp32, CPU, eval mode) on two input sets: held-out
real samples (the checkpoint's own test split) and random inputs spanning the data's value
range. The engine is fed batches of varying sizes (1, 7, the maximum) so the dynamic batch axis
is exercised too. Per output it reports the max and mean absolute difference, the relative
error ``||engine - reference|| / ||reference||`` and, for class scores, top-1 agreement.

Thresholds depend on precision. fp32 must agree everywhere: top-1 100% and max abs diff
<= 1e-4 on both sets. Reduced precision (fp16, bf16, int8) must keep top-1 >= 99.5% on the
held-out samples; random inputs are reported but not gated, because near-ties between class
scores on noise legitimately flip under reduced precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kiln_engines import Engine, Signature

Outputs = dict[str, np.ndarray]

BATCH_PATTERN = (1, 7)
"""Batch sizes fed before the maximum, to exercise the dynamic batch axis."""


@dataclass(frozen=True)
class Thresholds:
    max_abs_diff: float | None
    """Largest allowed absolute difference on any output (None: not gated)."""
    min_top1: float
    """Smallest allowed top-1 agreement."""
    gate_random: bool
    """Whether random inputs must meet the thresholds too (fp32), or are only reported."""


THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_abs_diff=1e-4, min_top1=1.0, gate_random=True),
    "fp16": Thresholds(max_abs_diff=None, min_top1=0.995, gate_random=False),
    "bf16": Thresholds(max_abs_diff=None, min_top1=0.995, gate_random=False),
    "int8": Thresholds(max_abs_diff=None, min_top1=0.995, gate_random=False),
}


@dataclass(frozen=True)
class OutputParity:
    output: str
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    relative_error: float
    top1_agreement: float | None
    """None for outputs that are not class scores (rank < 2 or a single column)."""


@dataclass(frozen=True)
class ParityReport:
    precision: str
    thresholds: Thresholds
    held_out: list[OutputParity]
    random: list[OutputParity]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "thresholds": asdict(self.thresholds),
            "held_out": [asdict(p) for p in self.held_out],
            "random": [asdict(p) for p in self.random],
            "failures": list(self.failures),
        }


def random_inputs(
    signature: Signature, like: Mapping[str, np.ndarray], count: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """`count` random samples per input, uniform over the value range of `like`."""
    rng = np.random.default_rng(seed)
    result = {}
    for spec in signature.inputs:
        real = like[spec.name]
        shape = (count, *real.shape[1:])
        lo, hi = float(real.min()), float(real.max())
        data: np.ndarray
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            data = rng.uniform(lo, hi if hi > lo else lo + 1.0, size=shape)
        else:
            data = rng.integers(int(lo), int(hi) + 1, size=shape)
        result[spec.name] = np.ascontiguousarray(data, dtype=spec.dtype)
    return result


def _batches(total: int, max_batch: int) -> Iterator[slice]:
    sizes = [b for b in BATCH_PATTERN if b < max_batch]
    start, i = 0, 0
    while start < total:
        size = sizes[i] if i < len(sizes) else max_batch
        yield slice(start, min(start + size, total))
        start += size
        i += 1


def run_batched(
    run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    inputs: Mapping[str, np.ndarray],
    max_batch: int,
) -> Outputs:
    """Run `run` over `inputs` in batches of 1, 7, then max_batch; concatenate the outputs."""
    total = next(iter(inputs.values())).shape[0]
    parts: dict[str, list[np.ndarray]] = {}
    for window in _batches(total, max_batch):
        out = run({name: np.ascontiguousarray(a[window]) for name, a in inputs.items()})
        for name, value in out.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def compare(reference: Outputs, candidate: Outputs) -> list[OutputParity]:
    results = []
    for name, ref in reference.items():
        got = candidate[name].astype(np.float64)
        ref64 = ref.astype(np.float64)
        diff = np.abs(got - ref64)
        norm = float(np.linalg.norm(ref64))
        top1 = None
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            top1 = float(np.mean(got.argmax(-1) == ref64.argmax(-1)))
        results.append(
            OutputParity(
                output=name,
                samples=int(ref.shape[0]),
                max_abs_diff=float(diff.max()),
                mean_abs_diff=float(diff.mean()),
                relative_error=float(np.linalg.norm(got - ref64) / norm) if norm else 0.0,
                top1_agreement=top1,
            )
        )
    return results


def _failures(subset: str, results: list[OutputParity], limits: Thresholds) -> list[str]:
    found = []
    for r in results:
        if limits.max_abs_diff is not None and not r.max_abs_diff <= limits.max_abs_diff:
            limit = limits.max_abs_diff
            found.append(f"{subset} '{r.output}': max abs diff {r.max_abs_diff:.3g} > {limit:g}")
        if r.top1_agreement is not None and r.top1_agreement < limits.min_top1:
            found.append(
                f"{subset} '{r.output}': top-1 agreement {r.top1_agreement:.2%} < "
                f"{limits.min_top1:.1%}"
            )
    return found


def check_parity(
    engine: Engine,
    precision: str,
    held_out: tuple[Mapping[str, np.ndarray], Outputs],
    random: tuple[Mapping[str, np.ndarray], Outputs],
    max_batch: int,
) -> ParityReport:
    """Compare `engine` with reference outputs on the held-out and the random inputs.

    Each pair is (inputs, reference outputs); the references are computed once per compile.
    """
    limits = THRESHOLDS[precision]
    held = compare(held_out[1], run_batched(engine.infer, held_out[0], max_batch))
    rand = compare(random[1], run_batched(engine.infer, random[0], max_batch))
    failures = _failures("held-out", held, limits)
    if limits.gate_random:
        failures += _failures("random", rand, limits)
    return ParityReport(precision, limits, held, rand, failures)
