"""What a loaded version looks like to clients, and the inputs that warm it up.

`describe` turns an engine's signature and the serving settings into the `ModelDescription`
that the metadata and config calls report (Triton's platform names included, so clients and
perf_analyzer recognise the engine); `warmup_inputs` gives the zero batches a version runs
before it takes requests, so the first request pays no lazy initialisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from kiln.serving.codec import DATATYPES, datatype_of
from kiln.serving.messages import ModelDescription, TensorSpec
from kiln.serving.repository import OpenedEngine
from kiln.serving.settings import ServingSettings
from kiln.serving.tokenization import text_spec
from kiln_engines import DYNAMIC, Signature

PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "onnx": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
    "aotinductor": "pytorch_aotinductor",
}
"""Triton's platform name for each artifact kind (clients show it; perf_analyzer reads it)."""

CONFIG_TYPES: Final[dict[str, str]] = {
    **{datatype: f"TYPE_{datatype}" for datatype in DATATYPES if datatype != "BYTES"},
    "BYTES": "TYPE_STRING",
}
"""KServe datatypes as Triton model-configuration data types (TYPE_STRING is BYTES)."""


def describe(
    name: str, version: int, opened: OpenedEngine, settings: ServingSettings
) -> ModelDescription:
    """A version's metadata and configuration, from its engine's signature and the settings.

    The model batches when every input and output has a dynamic leading dimension; its
    max_batch_size is the setting, capped by what the engine accepts. A text model (opened
    with its tokenizer) lists its `text` input first, then the engine's pre-tokenised inputs,
    all optional; its text stage adds the config parameters (`TextStage.parameters`).
    """
    signature: Signature = opened.engine.signature
    specs = (*signature.inputs, *signature.outputs)
    batched = all(s.shape and s.shape[0] == DYNAMIC for s in specs)
    max_batch = 0
    if batched and settings.max_batch_size:
        max_batch = min(settings.max_batch_size, signature.max_batch or settings.max_batch_size)

    def spec(name: str, dtype: str, shape: tuple[int, ...]) -> TensorSpec:
        np_dtype: np.dtype[Any] = np.dtype(dtype)
        return TensorSpec(name, datatype_of(np_dtype), shape, np_dtype)

    inputs = tuple(spec(s.name, s.dtype, s.shape) for s in signature.inputs)
    if opened.tokenizer is not None:
        # Either the strings or the pre-tokenised inputs: each alternative is optional.
        inputs = (text_spec(), *(dataclasses.replace(s, optional=True) for s in inputs))
    return ModelDescription(
        name=name,
        version=version,
        versions=(version,),
        platform=PLATFORMS.get(opened.kind, opened.kind),
        backend="onnxruntime" if opened.kind == "onnx" else opened.kind,
        inputs=inputs,
        outputs=tuple(spec(s.name, s.dtype, s.shape) for s in signature.outputs),
        max_batch_size=max_batch,
        max_queue_delay_us=settings.max_queue_delay_us,
        max_queue_size=settings.max_queue_size,
        default_timeout_us=settings.default_timeout_us,
        instances=1,
    )


def warmup_inputs(description: ModelDescription) -> Sequence[dict[str, Any]]:
    """Zero inputs at batch 1 and at the maximum batch (numeric inputs only; none for BYTES)."""
    if any(s.dtype == np.dtype(object) for s in description.inputs):
        return []
    sizes = [1] if description.max_batch_size <= 1 else [1, description.max_batch_size]
    feeds = []
    for rows in sizes:
        feed = {}
        for s in description.inputs:
            shape = [1 if d == DYNAMIC else d for d in s.shape]
            if description.max_batch_size and shape:
                shape[0] = rows
            feed[s.name] = np.zeros(shape, dtype=s.dtype)
        feeds.append(feed)
    return feeds
