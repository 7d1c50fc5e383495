"""The JSON documents of the KServe v2 REST protocol and Triton's extensions, from the core's
values: model metadata, model configuration, statistics, the repository index.

Field names and layouts are those Triton's HTTP endpoint answers (and `tritonclient.http` and
perf_analyzer read): the configuration's `dims` are numbers (not protobuf JSON's strings of
int64) and its data types Triton's (`TYPE_FP32`).
"""

from __future__ import annotations

from typing import Any

from kiln import __version__
from kiln.serving.description import CONFIG_TYPES
from kiln.serving.messages import IndexEntry, ModelDescription, TensorSpec
from kiln.serving.statistics import Duration, ModelStatistics

EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
    "binary_tensor_data",
)
"""The protocol extensions this endpoint implements, as GET /v2 lists them."""


def server_metadata() -> dict[str, Any]:
    return {"name": "kiln", "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(d: ModelDescription) -> dict[str, Any]:
    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}

    return {
        "name": d.name,
        "versions": [str(v) for v in d.versions],
        "platform": d.platform,
        "inputs": [tensor(s) for s in d.inputs],
        "outputs": [tensor(s) for s in d.outputs],
    }


def model_config(d: ModelDescription) -> dict[str, Any]:
    def dims(spec: TensorSpec) -> list[int]:
        # With batching, config dims leave out the batch dimension (Triton's convention).
        return list(spec.shape[1:] if d.max_batch_size else spec.shape)

    config: dict[str, Any] = {
        "name": d.name,
        "platform": d.platform,
        "backend": d.backend,
        "max_batch_size": d.max_batch_size,
        "version_policy": {"specific": {"versions": list(d.versions)}},
        "input": [
            {
                "name": s.name,
                "data_type": CONFIG_TYPES[s.datatype],
                "dims": dims(s),
                "optional": s.optional,
            }
            for s in d.inputs
        ],
        "output": [
            {"name": s.name, "data_type": CONFIG_TYPES[s.datatype], "dims": dims(s)}
            for s in d.outputs
        ],
        "instance_group": [{"name": f"{d.name}_0", "kind": "KIND_CPU", "count": d.instances}],
        "parameters": {k: {"string_value": v} for k, v in d.parameters.items()},
    }
    if d.max_batch_size:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": d.max_queue_delay_us,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": d.default_timeout_us,
                "allow_timeout_override": True,
                "max_queue_size": d.max_queue_size,
            },
        }
    return config


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def model_statistics(stats: list[ModelStatistics]) -> dict[str, Any]:
    none = {"count": 0, "ns": 0}
    return {
        "model_stats": [
            {
                "name": s.name,
                "version": str(s.version),
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": _duration(s.success),
                    "fail": _duration(s.fail),
                    "queue": _duration(s.queue),
                    "compute_input": _duration(s.compute_input),
                    "compute_infer": _duration(s.compute_infer),
                    "compute_output": _duration(s.compute_output),
                    "cache_hit": none,
                    "cache_miss": none,
                },
                "batch_stats": [
                    {
                        "batch_size": b.batch_size,
                        "compute_input": _duration(b.compute_input),
                        "compute_infer": _duration(b.compute_infer),
                        "compute_output": _duration(b.compute_output),
                    }
                    for _, b in sorted(s.batches.items())
                ],
            }
            for s in stats
        ]
    }


def repository_index(entries: list[IndexEntry]) -> list[dict[str, str]]:
    return [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
        for e in entries
    ]
