"""The checkpoint as the reference: PyTorch eager outputs, and eager as an Engine for timing."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from kiln.compile.parity import run_batched
from kiln_engines import Engine, Signature


class EagerEngine(Engine):
    """A PyTorch module behind the Engine interface: the baseline compiled engines must beat.

    It validates inputs like any engine, so timings compare like with like.
    """

    kind = "eager"

    def __init__(self, module: nn.Module, signature: Signature) -> None:
        super().__init__(signature, "cpu")
        self._module = module.eval()
        self._inputs = signature.input_names
        self._outputs = signature.output_names

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = self._module(*(torch.from_numpy(inputs[name]) for name in self._inputs))
        outputs = result if isinstance(result, list | tuple) else (result,)
        return {name: t.numpy() for name, t in zip(self._outputs, outputs, strict=True)}


def reference_outputs(
    module: nn.Module, signature: Signature, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The module's fp32 outputs for `inputs`, computed in batches (no larger than the
    signature's maximum: an exported program may refuse more)."""
    engine = EagerEngine(module, signature.with_max_batch(None))
    return run_batched(engine.infer, inputs, max_batch=min(256, signature.max_batch or 256))
