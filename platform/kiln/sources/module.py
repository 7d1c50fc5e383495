"""PyTorch module sources: the user's builder function plus safetensors weights.

`builder(**model_args)` must return an `nn.Module` whose `forward` takes the declared inputs,
in order, and returns a tensor or a tuple of tensors. The weights must fit its state dict
exactly (names and shapes), like `load_state_dict(strict=True)`, and are read with
safetensors, never with pickle. The builder is imported from `sys.path` with the current
directory on it, as `python -c "import pkg.mod"` would find it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from kiln.errors import SourceInvalid
from kiln.sources.formats import FileFormat, refuse_pickle
from kiln.sources.tensors import zeros
from kiln.train.builders import resolve_builder
from kiln_engines import DYNAMIC, Signature, TensorSpec

SHOWN_MISMATCHES = 5
"""Mismatched weight names or shapes listed in an error (the first ones, sorted)."""


def build_module(builder: str, model_args: Mapping[str, Any]) -> nn.Module:
    """Import `package.module:function`, call it with `model_args`, check it built a module."""
    if ":" not in builder:
        raise SourceInvalid(
            f"--module '{builder}' is not package.module:function; e.g. --module "
            "mymodels.tabular:build"
        )
    if os.getcwd() not in sys.path:  # console scripts do not put the current directory there
        sys.path.insert(0, os.getcwd())
    fn = resolve_builder(builder)
    try:
        module = fn(**model_args)
    except Exception as exc:
        raise SourceInvalid(
            f"builder '{builder}' raised {type(exc).__name__} when called with "
            f"{dict(model_args) or 'no arguments'}: {exc}"
        ) from exc
    if not isinstance(module, nn.Module):
        raise SourceInvalid(
            f"builder '{builder}' returned {type(module).__name__}, not a torch.nn.Module; it "
            "must build the model (e.g. return MyModel(**kwargs))"
        )
    return module.eval()


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN_MISMATCHES])
    more = f" (+{len(items) - SHOWN_MISMATCHES} more)" if len(items) > SHOWN_MISMATCHES else ""
    return shown + more


def load_weights(module: nn.Module, weights: Path, builder: str) -> nn.Module:
    """Load safetensors `weights` into `module`; every name and shape must match."""
    found = refuse_pickle(weights, "--weights")
    if found is not FileFormat.SAFETENSORS:
        raise SourceInvalid(
            f"--weights {weights} is not a safetensors file; save the state dict with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        )
    try:
        with safe_open(str(weights), framework="pt") as fh:
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise SourceInvalid(f"cannot read --weights {weights}: {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {list(state[k].shape)} (module: {list(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing from the file: {_first(missing)}")
    if unexpected:
        problems.append(f"not in the module: {_first(unexpected)}")
    if shapes:
        problems.append(f"shape differs: {_first(shapes)}")
    if problems:
        raise SourceInvalid(
            f"--weights {weights} do not fit the module '{builder}' builds: "
            + "; ".join(problems)
            + ". Save the weights of the same architecture (the same --model-arg values)"
        )
    module.load_state_dict(state, strict=True)
    return module.eval()


def _as_tuple(result: Any) -> tuple[torch.Tensor, ...]:
    outputs = tuple(result) if isinstance(result, list | tuple) else (result,)
    if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
        raise SourceInvalid(
            f"forward() returned {type(result).__name__}; it must return a tensor or a tuple "
            "of tensors (one per output)"
        )
    return outputs


def run_module(
    module: nn.Module, inputs: Mapping[str, np.ndarray], names: Sequence[str]
) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return _as_tuple(module(*(torch.from_numpy(inputs[n]) for n in names)))


def probe_outputs(
    module: nn.Module, inputs: Sequence[TensorSpec], what: str
) -> list[tuple[str, tuple[int, ...]]]:
    """Run `module` on zeros at two batch sizes and sequence lengths; the dtype and shape of
    each output, -1 where the two runs differ (a dynamic axis).

    Raises `SourceInvalid` with torch's error when the module cannot take the inputs.
    """
    names = [s.name for s in inputs]
    runs = []
    for batch, length in ((2, 3), (3, 5)):
        try:
            runs.append(run_module(module, zeros(inputs, batch, length), names))
        except SourceInvalid:
            raise
        except Exception as exc:
            declared = Signature(tuple(inputs), (TensorSpec("out", "float32", (1,)),))
            ins = declared.describe().split(" -> ")[0]
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
            raise SourceInvalid(
                f"the {what} cannot run on the declared inputs ({ins}): {type(exc).__name__}: "
                f"{first[:400]}. Declare the inputs forward() takes, in order, with --input"
            ) from exc
    first_run, second_run = runs
    if len(first_run) != len(second_run):
        raise SourceInvalid(f"the {what} returned a different number of outputs per call")
    found = []
    for a, b in zip(first_run, second_run, strict=True):
        if a.dim() == 0:
            raise SourceInvalid(
                f"the {what} returned a scalar; outputs need a batch axis (shape [N, ...])"
            )
        shape = tuple(DYNAMIC if x != y else int(x) for x, y in zip(a.shape, b.shape, strict=False))
        found.append((str(a.dtype).removeprefix("torch."), shape))
    return found


def module_source(builder: str, model_args: Mapping[str, Any], weights: Path) -> nn.Module:
    """The user's module with its weights, in eval mode."""
    module = build_module(builder, model_args)
    return load_weights(module, weights, builder)
