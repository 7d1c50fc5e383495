"""KServe tensor codec: raw and typed contents ⇄ numpy, for every datatype (hypothesis)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kiln.errors import InferRequestInvalid
from kiln.serving import codec

NUMERIC = [d for d in codec.DATATYPES if d != "BYTES"]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw: st.DrawFn, datatype: str) -> np.ndarray[Any, Any]:
    dtype = codec.numpy_dtype(datatype)
    if datatype == "BF16":
        values = draw(hnp.arrays(np.float32, draw(shapes), elements=st.floats(-1e3, 1e3, width=32)))
        return values.astype(dtype)
    return draw(hnp.arrays(dtype, draw(shapes)))


@pytest.mark.parametrize("datatype", NUMERIC)
@given(data=st.data())
def test_numeric_raw_round_trip(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype))
    raw = codec.encode_raw(array)
    assert len(raw) == array.size * array.dtype.itemsize
    decoded = codec.decode_raw("x", datatype, array.shape, raw)
    assert decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()  # bit for bit, NaNs included
    assert codec.datatype_of(decoded.dtype) == datatype


def test_raw_is_little_endian_whatever_the_array_order() -> None:
    big = np.array([1.5, -2.0], dtype=">f4")
    assert codec.encode_raw(big) == np.array([1.5, -2.0], dtype="<f4").tobytes()
    assert codec.datatype_of(big.dtype) == "FP32"


def test_decoding_numeric_raw_is_zero_copy() -> None:
    raw = np.arange(6, dtype="<i4").tobytes()
    decoded = codec.decode_raw("x", "INT32", (2, 3), raw)
    assert not decoded.flags.writeable
    assert decoded.base is not None


@given(elements=st.lists(st.binary(max_size=20), max_size=12))
def test_bytes_round_trip(elements: list[bytes]) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    raw = codec.encode_raw(array)
    assert len(raw) == sum(4 + len(e) for e in elements)
    decoded = codec.decode_raw("s", "BYTES", (len(elements),), raw)
    assert list(decoded) == elements


def test_bytes_encode_str_as_utf8() -> None:
    assert codec.encode_bytes(["é"]) == struct.pack("<I", 2) + "é".encode()


@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d != "BF16"])
@given(data=st.data())
def test_raw_length_must_match_the_shape(datatype: str, data: st.DataObject) -> None:
    shape = data.draw(shapes)
    size = codec.numpy_dtype(datatype).itemsize
    wrong = data.draw(st.integers(0, 64).filter(lambda n: n != int(np.prod(shape)) * size))
    with pytest.raises(InferRequestInvalid, match=rf"input 'x': shape .* needs .* hold {wrong}$"):
        codec.decode_raw("x", datatype, shape, bytes(wrong))


def _well_formed(raw: bytes, count: int) -> bool:
    offset = elements = 0
    while offset + 4 <= len(raw):
        offset += 4 + struct.unpack_from("<I", raw, offset)[0]
        elements += 1
    return offset == len(raw) and elements == count


@given(raw=st.binary(max_size=40), count=st.integers(0, 5))
def test_malformed_bytes_contents_are_refused_not_misread(raw: bytes, count: int) -> None:
    if _well_formed(raw, count):
        decoded = codec.decode_raw("s", "BYTES", (count,), raw)
        assert codec.encode_raw(decoded) == raw
    else:
        with pytest.raises(InferRequestInvalid, match="input 's'"):
            codec.decode_raw("s", "BYTES", (count,), raw)


@given(dims=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4))
def test_negative_or_huge_dims_are_refused(dims: list[int]) -> None:
    if all(d >= 0 for d in dims) and np.prod([float(d) for d in dims]) * 4 == 16:
        return  # the one shape that 16 bytes really fill
    with pytest.raises(InferRequestInvalid, match="input 'x'"):
        codec.decode_raw("x", "FP32", dims, bytes(16))


def test_unknown_datatype_lists_the_known_ones() -> None:
    with pytest.raises(InferRequestInvalid, match="unknown datatype 'FLOAT32'; datatypes: BOOL"):
        codec.decode_raw("x", "FLOAT32", (1,), bytes(4))


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [True, False]),
        ("INT8", [-128, 127]),
        ("UINT16", [0, 65535]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("UINT64", [0, 2**64 - 1]),
        ("FP32", [0.5, -1.25]),
        ("FP64", [1e300, -1e-300]),
        ("BYTES", [b"a", b""]),
    ],
)
def test_typed_contents(datatype: str, values: list[Any]) -> None:
    decoded = codec.decode_typed("t", datatype, (2,), values)
    assert decoded.dtype == codec.numpy_dtype(datatype)
    assert list(decoded) == values


@given(value=st.integers(-(2**31), 2**31 - 1).filter(lambda v: not -128 <= v <= 127))
def test_typed_values_out_of_range_are_refused(value: int) -> None:
    with pytest.raises(InferRequestInvalid, match=r"out of range for INT8 \(-128\.\.127\)"):
        codec.decode_typed("t", "INT8", (1,), [value])


def test_typed_fp16_must_travel_raw() -> None:
    with pytest.raises(InferRequestInvalid, match="FP16 has no typed contents"):
        codec.decode_typed("t", "FP16", (1,), [1.0])


def test_typed_count_must_match_the_shape() -> None:
    with pytest.raises(
        InferRequestInvalid, match=r"needs 6 elements, but its typed contents hold 5"
    ):
        codec.decode_typed("t", "FP32", (2, 3), [0.0] * 5)


dims = st.one_of(st.sampled_from([0, 1, 2, 3, 2**31, 2**48, 2**62, 2**63 - 1]), st.integers(-2, 8))


@given(
    datatype=st.sampled_from(codec.DATATYPES),
    shape=st.lists(dims, max_size=80),
    raw=st.sampled_from([b"", bytes(1), bytes(4), bytes(16), b"\x01\x00\x00\x00a"]),
)
def test_any_shape_decodes_or_is_refused_never_a_numpy_error(
    datatype: str, shape: list[int], raw: bytes
) -> None:
    # numpy refuses more than 64 dimensions, and empty shapes whose other dimensions overflow
    # (ValueError): the codec refuses those itself, as a client mistake naming the input.
    for decode in (
        lambda: codec.decode_raw("x", datatype, shape, raw),
        lambda: codec.decode_typed("x", datatype, shape, []),
    ):
        problem = ""
        try:
            decoded = decode()
        except InferRequestInvalid as exc:
            problem = exc.message
        assert "input 'x'" in problem if problem else list(decoded.shape) == shape


def test_too_many_dimensions_are_refused_by_count() -> None:
    with pytest.raises(InferRequestInvalid, match="input 'x' has 100 dimensions; tensors have at"):
        codec.decode_raw("x", "FP32", [1] * 100, bytes(4))
    assert codec.decode_raw("x", "FP32", [1] * codec.MAX_RANK, bytes(4)).ndim == codec.MAX_RANK


def test_an_empty_tensor_with_huge_dimensions_is_refused() -> None:
    with pytest.raises(InferRequestInvalid, match="input 'x' is empty"):
        codec.decode_raw("x", "FP32", [0, 2**62, 2**62], b"")
    assert codec.decode_raw("x", "FP32", [0, 2**20, 2**20], b"").shape == (0, 2**20, 2**20)


def test_names_in_messages_are_quoted_and_bounded() -> None:
    with pytest.raises(InferRequestInvalid) as err:
        codec.decode_raw("n\x00" + "x" * 10_000, "FP32", [2], bytes(4))
    assert "\x00" not in err.value.message and len(err.value.message) < 300
    assert "(10002 characters)" in err.value.message
