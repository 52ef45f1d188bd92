"""The V2 tensor codec (workers/tensors.py): every datatype round-trips through each encoding, and what does
not fit its datatype or shape is a 400 naming the tensor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workers import tensors
from workers.errors import BadRequest

NUMERIC = [d for d in tensors.V2_TO_NUMPY if d != "BYTES"]


@st.composite
def numeric_tensors(draw):
    datatype = draw(st.sampled_from(NUMERIC))
    dtype = tensors.V2_TO_NUMPY[datatype]
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return datatype, draw(hnp.arrays(dtype, shape, elements={"allow_nan": False} if dtype.kind == "f" else None))


@st.composite
def bytes_tensors(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4))
    values = draw(st.lists(st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


@given(numeric_tensors())
def test_numeric_tensors_round_trip_raw_json_and_contents(case):
    datatype, array = case
    assert tensors.datatype_of(array.dtype) == datatype
    shape = list(array.shape)
    np.testing.assert_array_equal(tensors.from_raw(datatype, shape, tensors.to_raw(array), "t"), array)
    np.testing.assert_array_equal(tensors.from_json(datatype, shape, tensors.to_json(array), "t"), array)
    if datatype != "FP16":  # FP16 has no typed contents field: raw only
        _, values = tensors.to_contents(array)
        np.testing.assert_array_equal(tensors.from_contents(datatype, shape, values, "t"), array)


@given(bytes_tensors())
def test_bytes_tensors_round_trip_raw_and_contents(array):
    shape = list(array.shape)
    assert tensors.from_raw("BYTES", shape, tensors.to_raw(array), "t").tolist() == array.tolist()
    _, values = tensors.to_contents(array)
    assert tensors.from_contents("BYTES", shape, values, "t").tolist() == array.tolist()


def test_raw_is_little_endian_and_bytes_are_length_prefixed():
    assert tensors.to_raw(np.asarray([1, 2], dtype=np.int32)) == b"\x01\0\0\0\x02\0\0\0"
    assert tensors.to_raw(np.asarray([b"ab", b""], dtype=object)) == b"\x02\0\0\0ab\0\0\0\0"
    assert tensors.to_json(np.asarray(["é"], dtype=object)) == ["é"]


@pytest.mark.parametrize("call,message", [
    (lambda: tensors.from_json("FP32", [1, 4], [1, 2, 3], "x"), "has 3 values; shape [1, 4] needs 4"),
    (lambda: tensors.from_json("INT64", [2], [1, 2.5], "x"), "non-integer"),
    (lambda: tensors.from_json("FP32", [1], [True], "x"), "must be numbers"),
    (lambda: tensors.from_json("BOOL", [1], [1], "x"), "must be booleans"),
    (lambda: tensors.from_json("INT8", [1], [300], "x"), "out of bounds"),
    (lambda: tensors.from_json("FP32", [-1], [1], "x"), "non-negative integers"),
    (lambda: tensors.from_json("FP99", [1], [1], "x"), "'FP99' is not supported"),
    (lambda: tensors.from_json("FP32", [1], None, "x"), "has no data"),
    (lambda: tensors.from_raw("FP32", [2], b"\0" * 7, "x"), "has 7 bytes; FP32 of shape [2] needs 8"),
    (lambda: tensors.from_raw("BYTES", [2], b"\x01\0\0\0a", "x"), "ends after 1 of 2"),
    (lambda: tensors.from_raw("BYTES", [1], b"\x09\0\0\0a", "x"), "past the end"),
    (lambda: tensors.from_raw("BYTES", [1], b"\x01\0\0\0ab", "x"), "left over"),
    (lambda: tensors.to_json(np.asarray([b"\xff"], dtype=object)), "binary_data"),
])
def test_what_does_not_fit_is_a_400_naming_the_tensor(call, message):
    with pytest.raises(BadRequest) as e:
        call()
    assert message in e.value.description
