"""Data sets with deterministic splits and content fingerprints (for lineage).

`load_dataset(name_or_path, settings, seed=0) -> Dataset` is the entry point; `CATALOG` lists
the named sets (classification and regression: `Dataset.task`). Inputs are float32 raw values;
normalisation is the model's job.
"""

from __future__ import annotations

from kiln.data.builtin import to_mnist_frame
from kiln.data.catalog import (
    CATALOG,
    DatasetInfo,
    load_dataset,
    load_raw,
    load_recorded,
    modality_of,
    task_of,
)
from kiln.data.dataset import (
    CLASSIFICATION,
    REGRESSION,
    TASKS,
    Dataset,
    Split,
    SplitSpec,
    sample_digests,
)
from kiln.data.user import prepare_image

__all__ = [
    "CATALOG",
    "CLASSIFICATION",
    "REGRESSION",
    "TASKS",
    "Dataset",
    "DatasetInfo",
    "Split",
    "SplitSpec",
    "load_dataset",
    "load_raw",
    "load_recorded",
    "modality_of",
    "prepare_image",
    "sample_digests",
    "task_of",
    "to_mnist_frame",
]
