"""Protobuf messages of `inference.GRPCInferenceService` ⇄ the core's values.

The request path is the hot path: raw contents decode without copies (`codec.decode_raw`),
outputs are always sent raw (tritonclient reads only raw outputs), and nothing is looked up
twice. Typed contents are accepted on input, one field per datatype as KServe v2 specifies.
"""

from __future__ import annotations

from typing import Any, Final

import numpy.typing as npt
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from kiln.errors import InferRequestInvalid, InvalidArgument, quote
from kiln.serving import codec
from kiln.serving.control import check_output_parameters, queue_timeout_us
from kiln.serving.description import CONFIG_TYPES
from kiln.serving.grpc.generated.inference import grpc_service_pb2 as pb
from kiln.serving.grpc.generated.inference import model_config_pb2 as mc
from kiln.serving.messages import (
    IndexEntry,
    InferRequest,
    InferResponse,
    ModelDescription,
    ParameterValue,
    TensorSpec,
)
from kiln.serving.statistics import Duration, ModelStatistics
from kiln.traffic import Transport

TRANSPORT: Final = Transport.GRPC.value
"""What requests decoded here record as their transport (a plain str: the traffic hook's
`str()` of it then costs nothing)."""

TYPED_FIELD: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Which `InferTensorContents` field carries each datatype (FP16 and BF16 travel raw only)."""

_EXTENSIONS: Final = "see ServerMetadata extensions"


def decode(message_type: Any, data: bytes) -> Any:
    """Parse a request's wire bytes. The server's handlers receive bytes and parse them here,
    so that bytes that are no such message are INVALID_ARGUMENT saying so (gRPC's own
    deserializers make them UNKNOWN, naming protobuf's exception class)."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise InvalidArgument(
            f"the request is not a valid {message_type.DESCRIPTOR.full_name} message "
            f"({len(data)} bytes that do not parse as protobuf): send one encoded from the "
            "KServe v2 / kiln.v1 protos (ServerReflection serves them)"
        ) from None


# -- inference ------------------------------------------------------------------------------------


def infer_request(message: pb.ModelInferRequest, received_ns: int) -> InferRequest:
    """Decode a ModelInferRequest; raises `InferRequestInvalid` naming the problem."""
    raw = message.raw_input_contents
    tensors = message.inputs
    if raw and len(raw) != len(tensors):
        raise InferRequestInvalid(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; send one "
            "entry per input, in the order of `inputs`"
        )
    inputs: dict[str, npt.NDArray[Any]] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in inputs:
            raise InferRequestInvalid(f"input {quote(name)} appears more than once")
        if tensor.HasField("contents"):
            if raw:
                raise InferRequestInvalid(
                    f"input {quote(name)} has typed contents and the request also has "
                    "raw_input_contents; use one or the other for all inputs"
                )
            inputs[name] = _typed(tensor)
        elif raw:
            inputs[name] = codec.decode_raw(name, tensor.datatype, tuple(tensor.shape), raw[index])
        else:
            raise InferRequestInvalid(
                f"input {quote(name)} has no data: put it in raw_input_contents (one entry per "
                "input) or in its typed contents"
            )
    parameters = _parameters(message.parameters) if message.parameters else {}
    timeout = queue_timeout_us(parameters)
    outputs: tuple[str, ...] = ()
    if message.outputs:
        outputs = tuple([o.name for o in message.outputs])
        for output in message.outputs:
            if output.parameters:
                check_output_parameters(output.name, output.parameters, _EXTENSIONS)
    # Positional, in field order: nine keyword arguments cost ~0.4 us more per request
    # (measured). tests/unit/test_serving_wire.py checks each field lands where it belongs.
    return InferRequest(
        message.model_name,  # model
        inputs,
        message.model_version,  # version
        message.id,
        outputs,
        timeout,  # timeout_us
        parameters,
        received_ns,
        TRANSPORT,
    )


def infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """Encode a response with every output in raw_output_contents."""
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    outputs = message.outputs
    raw = message.raw_output_contents
    for name, array in response.outputs.items():
        outputs.add(name=name, datatype=codec.datatype_of(array.dtype), shape=array.shape)
        raw.append(codec.encode_raw(array))
    return message


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> npt.NDArray[Any]:
    name, datatype = tensor.name, tensor.datatype
    field = TYPED_FIELD.get(datatype)
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if field is None or any(u != field for u in used):
        codec.numpy_dtype(datatype)  # unknown datatypes fail here with the list of known ones
        where = f"goes in {field}" if field else "has no typed contents (send raw bytes)"
        raise InferRequestInvalid(
            f"input {quote(name)} is {datatype} but its contents use {', '.join(used)}; "
            f"{datatype} {where}"
        )
    values = getattr(tensor.contents, field)
    return codec.decode_typed(name, datatype, tuple(tensor.shape), values)


def _parameters(parameters: Any) -> dict[str, ParameterValue]:
    decoded: dict[str, ParameterValue] = {}
    for key, value in parameters.items():
        which = value.WhichOneof("parameter_choice")
        decoded[key] = getattr(value, which) if which else ""
    return decoded


# -- metadata, configuration, statistics, repository ----------------------------------------------


def model_metadata(d: ModelDescription) -> pb.ModelMetadataResponse:
    def tensor(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=spec.datatype, shape=spec.shape
        )

    return pb.ModelMetadataResponse(
        name=d.name,
        versions=[str(v) for v in d.versions],
        platform=d.platform,
        inputs=[tensor(s) for s in d.inputs],
        outputs=[tensor(s) for s in d.outputs],
    )


def model_config(d: ModelDescription) -> pb.ModelConfigResponse:
    def dims(spec: TensorSpec) -> tuple[int, ...]:
        # With batching, config dims leave out the batch dimension (Triton's convention).
        return spec.shape[1:] if d.max_batch_size else spec.shape

    config = mc.ModelConfig(
        name=d.name,
        platform=d.platform,
        backend=d.backend,
        max_batch_size=d.max_batch_size,
        version_policy=mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=d.versions)
        ),
        input=[
            mc.ModelInput(
                name=s.name, data_type=CONFIG_TYPES[s.datatype], dims=dims(s), optional=s.optional
            )
            for s in d.inputs
        ],
        output=[
            mc.ModelOutput(name=s.name, data_type=CONFIG_TYPES[s.datatype], dims=dims(s))
            for s in d.outputs
        ],
        instance_group=[
            mc.ModelInstanceGroup(name=f"{d.name}_0", kind="KIND_CPU", count=d.instances)
        ],
        parameters={k: mc.ModelParameter(string_value=v) for k, v in d.parameters.items()},
    )
    if d.max_batch_size:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                max_queue_delay_microseconds=d.max_queue_delay_us,
                default_queue_policy=mc.ModelQueuePolicy(
                    timeout_action="REJECT",
                    default_timeout_microseconds=d.default_timeout_us,
                    allow_timeout_override=True,
                    max_queue_size=d.max_queue_size,
                ),
            )
        )
    return pb.ModelConfigResponse(config=config)


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(stats: list[ModelStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(
        model_stats=[
            pb.ModelStatistics(
                name=s.name,
                version=str(s.version),
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    success=_duration(s.success),
                    fail=_duration(s.fail),
                    queue=_duration(s.queue),
                    compute_input=_duration(s.compute_input),
                    compute_infer=_duration(s.compute_infer),
                    compute_output=_duration(s.compute_output),
                    cache_hit=pb.StatisticDuration(),
                    cache_miss=pb.StatisticDuration(),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(
                        batch_size=b.batch_size,
                        compute_input=_duration(b.compute_input),
                        compute_infer=_duration(b.compute_infer),
                        compute_output=_duration(b.compute_output),
                    )
                    for _, b in sorted(s.batches.items())
                ],
            )
            for s in stats
        ]
    )


def repository_index(entries: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )
