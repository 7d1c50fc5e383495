"""Bad ModelInferRequests, generated with hypothesis, against a real server.

Each kind of mistake a client can make gets the right gRPC status and a message naming the
problem, and the server keeps answering good requests afterwards. Requests are built by hand
with the stock protobuf classes tritonclient ships, and sent over a plain gRPC channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

import kiln.registry
from kiln.serving.codec import DATATYPES, numpy_dtype
from kiln.settings import Settings
from tests.integration.grpc_harness import INPUT, OUTPUT, RunningServer, register, running_server

MAX_BATCH = 8
MAX_MESSAGE = 1 << 20
ROW_BYTES = 784 * 4
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@dataclass(frozen=True)
class Bad:
    """A request, the status it must get, and words its message must contain."""

    request: service_pb2.ModelInferRequest
    code: grpc.StatusCode
    says: str

    def __repr__(self) -> str:
        # Requests can carry megabytes of raw contents: show their outline only.
        outline = service_pb2.ModelInferRequest()
        outline.CopyFrom(self.request)
        sizes = [len(raw) for raw in outline.raw_input_contents]
        outline.ClearField("raw_input_contents")
        text = str(outline).replace("\n", " ")[:400]
        return f"Bad({text} raw sizes {sizes}; expect {self.code.name} '{self.says}')"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("bad")
    with kiln.registry.open(settings=Settings(home=root / "home")) as registry:
        register(registry, root, "digits", seed=1)
    with running_server(
        root / "home", max_batch_size=MAX_BATCH, max_message_bytes=MAX_MESSAGE
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    # The client may send more than the server accepts: that is what is being tested.
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.url, options=options) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def good(rows: int = 1, **fields: object) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits", **fields)  # type: ignore[arg-type]
    request.inputs.add(name=INPUT, datatype="FP32", shape=[rows, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((rows, 1, 28, 28), np.float32).tobytes())
    return request


def check(stub: service_pb2_grpc.GRPCInferenceServiceStub, bad: Bad) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(bad.request, timeout=30)
    assert err.value.code() == bad.code, err.value.details()
    assert bad.says in err.value.details()
    # ... and the server still serves.
    response = stub.ModelInfer(good(), timeout=30)
    assert response.outputs[0].name == OUTPUT


rows = st.integers(1, MAX_BATCH)


@st.composite
def wrong_datatype(draw: st.DrawFn) -> Bad:
    datatype = draw(st.sampled_from([d for d in DATATYPES if d != "FP32"]))
    n = draw(rows)
    request = good(n)
    request.inputs[0].datatype = datatype
    count = n * 784
    if datatype == "BYTES":
        raw = b"\x00\x00\x00\x00" * count
    else:
        raw = bytes(count * numpy_dtype(datatype).itemsize)
    request.raw_input_contents[0] = raw
    return Bad(request, INVALID, f"has datatype {datatype}, but the model expects FP32")


@st.composite
def unknown_datatype(draw: st.DrawFn) -> Bad:
    name = draw(st.text(min_size=1, max_size=10).filter(lambda s: s not in DATATYPES))
    request = good()
    request.inputs[0].datatype = name
    return Bad(request, INVALID, "unknown datatype")


@st.composite
def shape_disagrees_with_raw_length(draw: st.DrawFn) -> Bad:
    n = draw(rows)
    delta = draw(st.integers(-n * ROW_BYTES, 4096).filter(lambda d: d != 0))
    request = good(n)
    request.raw_input_contents[0] = bytes(n * ROW_BYTES + delta)
    return Bad(request, INVALID, f"needs {n * ROW_BYTES} bytes")


@st.composite
def shape_the_model_does_not_take(draw: st.DrawFn) -> Bad:
    dims = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    if dims[1:] == [1, 28, 28]:
        dims.append(1)
    request = good()
    request.inputs[0].ClearField("shape")
    request.inputs[0].shape.extend(dims)
    request.raw_input_contents[0] = bytes(int(np.prod(dims)) * 4)
    return Bad(request, INVALID, "but the model expects [-1, 1, 28, 28]")


@st.composite
def negative_dims(draw: st.DrawFn) -> Bad:
    dims = draw(st.lists(st.integers(-(2**63), 64), min_size=1, max_size=5))
    if all(d >= 0 for d in dims):
        dims[draw(st.integers(0, len(dims) - 1))] = draw(st.integers(-(2**63), -1))
    request = good()
    request.inputs[0].ClearField("shape")
    request.inputs[0].shape.extend(dims)
    return Bad(request, INVALID, "dimensions must be >= 0")


@st.composite
def overflowing_dims(draw: st.DrawFn) -> Bad:
    dims = [draw(st.integers(2**31, 2**63 - 1)), 1, 28, draw(st.integers(28, 2**63 - 1))]
    request = good()
    request.inputs[0].ClearField("shape")
    request.inputs[0].shape.extend(dims)
    return Bad(request, INVALID, "bytes")


@st.composite
def batch_too_large(draw: st.DrawFn) -> Bad:
    n = draw(st.integers(MAX_BATCH + 1, 4 * MAX_BATCH))
    return Bad(good(n), INVALID, f"exceeds the model's max_batch_size {MAX_BATCH}")


@st.composite
def missing_input(draw: st.DrawFn) -> Bad:
    request = service_pb2.ModelInferRequest(model_name="digits")
    extra = draw(st.lists(st.sampled_from(["image", "pixels", "x"]), max_size=2, unique=True))
    for name in extra:
        request.inputs.add(name=name, datatype="FP32", shape=[1, 1, 28, 28])
        request.raw_input_contents.append(bytes(ROW_BYTES))
    return Bad(request, INVALID, f"missing input '{INPUT}'")


@st.composite
def extra_input(draw: st.DrawFn) -> Bad:
    name = draw(st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12))
    request = good()
    if name == INPUT:
        return Bad(_twice(request), INVALID, "appears more than once")
    request.inputs.add(name=name, datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(bytes(ROW_BYTES))
    return Bad(request, INVALID, f"unexpected input '{name}'")


def _twice(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    request.inputs.add().CopyFrom(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    return request


@st.composite
def unknown_output(draw: st.DrawFn) -> Bad:
    name = draw(st.text(min_size=1, max_size=12).filter(lambda s: s != OUTPUT))
    request = good()
    request.outputs.add(name=name)
    return Bad(request, INVALID, "unknown output")


@st.composite
def raw_and_typed(draw: st.DrawFn) -> Bad:
    request = good()
    request.inputs[0].contents.fp32_contents.extend([0.0] * draw(st.integers(0, 784)))
    if not request.inputs[0].contents.fp32_contents:
        request.inputs[0].contents.SetInParent()
    return Bad(request, INVALID, "use one or the other")


@st.composite
def empty_contents(draw: st.DrawFn) -> Bad:
    kind = draw(st.sampled_from(["no data", "empty typed", "zero rows"]))
    request = good()
    if kind == "no data":
        request.ClearField("raw_input_contents")
        return Bad(request, INVALID, "has no data")
    if kind == "empty typed":
        request.ClearField("raw_input_contents")
        request.inputs[0].contents.SetInParent()
        return Bad(request, INVALID, "typed contents hold 0")
    request.inputs[0].shape[0] = 0
    request.raw_input_contents[0] = b""
    return Bad(request, INVALID, "is empty")


@st.composite
def typed_in_the_wrong_field(draw: st.DrawFn) -> Bad:
    request = good()
    request.ClearField("raw_input_contents")
    field = draw(st.sampled_from(["int_contents", "int64_contents", "fp64_contents"]))
    getattr(request.inputs[0].contents, field).extend([0] * 784)
    return Bad(request, INVALID, "FP32 goes in fp32_contents")


@st.composite
def raw_entries_disagree_with_inputs(draw: st.DrawFn) -> Bad:
    request = good()
    for _ in range(draw(st.integers(1, 3))):
        request.raw_input_contents.append(bytes(ROW_BYTES))
    return Bad(request, INVALID, "entries for 1 inputs")


@st.composite
def unknown_model(draw: st.DrawFn) -> Bad:
    name = draw(
        st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True).filter(lambda s: s != "digits")
    )
    request = good()
    request.model_name = name
    return Bad(request, NOT_FOUND, f"model '{name}' is not served here")


@st.composite
def unknown_version(draw: st.DrawFn) -> Bad:
    version = draw(
        st.one_of(
            st.integers(2, 2**40).map(str),
            st.text(min_size=1, max_size=6).filter(lambda s: not (s.isascii() and s.isdigit())),
        )
    )
    request = good()
    request.model_version = version
    # "²".isdigit() is True, yet it is no version number: only ASCII digits name one.
    numeric = version.isascii() and version.isdigit()
    return Bad(request, NOT_FOUND, f"version {version}" if numeric else "no version")


@st.composite
def bad_timeout(draw: st.DrawFn) -> Bad:
    request = good()
    parameter = request.parameters["timeout"]
    kind = draw(st.sampled_from(["string", "negative", "double"]))
    if kind == "string":
        parameter.string_param = draw(st.text(max_size=5))
    elif kind == "negative":
        parameter.int64_param = draw(st.integers(-(2**63), -1))
    else:
        parameter.double_param = draw(st.floats(allow_nan=False))
    return Bad(request, INVALID, "parameter 'timeout'")


MISTAKES = {
    "wrong datatype": wrong_datatype(),
    "unknown datatype": unknown_datatype(),
    "shape vs raw byte length": shape_disagrees_with_raw_length(),
    "shape the model does not take": shape_the_model_does_not_take(),
    "negative dims": negative_dims(),
    "overflowing dims": overflowing_dims(),
    "batch too large": batch_too_large(),
    "missing input": missing_input(),
    "extra input": extra_input(),
    "unknown output": unknown_output(),
    "raw and typed both set": raw_and_typed(),
    "empty contents": empty_contents(),
    "typed contents in the wrong field": typed_in_the_wrong_field(),
    "raw entries disagree with inputs": raw_entries_disagree_with_inputs(),
    "unknown model": unknown_model(),
    "unknown version": unknown_version(),
    "bad timeout parameter": bad_timeout(),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bad_request_gets_the_right_status_and_message(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, mistake: str, data: st.DataObject
) -> None:
    check(stub, data.draw(MISTAKES[mistake], label=mistake))


@settings(max_examples=5, deadline=None)
@given(extra=st.integers(1, MAX_MESSAGE))
def test_oversized_message_is_resource_exhausted(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, extra: int
) -> None:
    request = good()
    request.raw_input_contents[0] = bytes(MAX_MESSAGE + extra)
    check(stub, Bad(request, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"))


def test_full_queue_is_resource_exhausted_and_the_rest_succeed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("queue")
    with kiln.registry.open(settings=Settings(home=root / "home")) as registry:
        register(registry, root, "digits", seed=1)
    # Every request goes to the engine's thread (none runs inline on the event loop), so that
    # requests arrive faster than it answers them.
    settings = {"max_batch_size": 1, "max_queue_size": 2, "warmup": False, "inline_idle_us": 0}
    with running_server(root / "home", **settings) as server:
        codes = asyncio.run(_flood(server.url, requests=200))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) > 0
    assert codes.count(grpc.StatusCode.OK) > 0


async def _flood(url: str, requests: int) -> list[grpc.StatusCode]:
    async with grpc.aio.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> grpc.StatusCode:
            call = stub.ModelInfer(good(), timeout=60)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
            code: grpc.StatusCode = await call.code()
            if code is not grpc.StatusCode.OK:
                assert "requests queued (the maximum)" in (await call.details() or "")
            return code

        return await asyncio.gather(*(one() for _ in range(requests)))
