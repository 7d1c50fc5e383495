"""The inference contract in proto/ is wire-compatible with Triton's (as tritonclient embeds it).

Compared field by field: every message, field name, number, type and label, every enum value,
every RPC and its streaming shape. Kiln's .proto files are written independently; this test is
what keeps them honest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from kiln.serving.grpc.generated.inference import grpc_service_pb2, model_config_pb2


def _messages(descriptors: dict[str, Descriptor]) -> Iterator[Descriptor]:
    for message in descriptors.values():
        yield message
        yield from _messages({m.name: m for m in message.nested_types})


def _enums(file: FileDescriptor) -> Iterator[EnumDescriptor]:
    yield from file.enum_types_by_name.values()
    for message in _messages(file.message_types_by_name):
        yield from message.enum_types


def _shape(file: FileDescriptor) -> dict[str, object]:
    shape: dict[str, object] = {}
    for message in _messages(file.message_types_by_name):
        shape[message.full_name] = {
            f.number: (f.name, f.type, f.is_repeated, f.message_type and f.message_type.full_name)
            for f in message.fields
        }
    for enum in _enums(file):
        shape[enum.full_name] = {v.number: v.name for v in enum.values}
    for service in file.services_by_name.values():
        shape[service.full_name] = {
            m.name: (
                m.input_type.full_name,
                m.output_type.full_name,
                m.client_streaming,
                m.server_streaming,
            )
            for m in service.methods
        }
    return shape


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (model_config_pb2.DESCRIPTOR, triton_config.DESCRIPTOR),
        (grpc_service_pb2.DESCRIPTOR, triton_service.DESCRIPTOR),
    ],
    ids=["model_config", "grpc_service"],
)
def test_inference_proto_matches_triton(ours: FileDescriptor, theirs: FileDescriptor) -> None:
    assert ours.package == theirs.package == "inference"
    mine, reference = _shape(ours), _shape(theirs)
    assert sorted(mine) == sorted(reference)
    for name, fields in reference.items():
        assert mine[name] == fields, name


def test_messages_round_trip_between_kiln_and_tritonclient() -> None:
    ours = grpc_service_pb2.ModelInferRequest(model_name="digits", model_version="2", id="r1")
    tensor = ours.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    tensor.parameters["binary_data_size"].int64_param = 8
    ours.raw_input_contents.append(b"\x00" * 8)
    theirs = triton_service.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].shape == [1, 2]
    wire = ours.SerializeToString(deterministic=True)
    assert theirs.SerializeToString(deterministic=True) == wire
