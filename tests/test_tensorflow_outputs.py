"""TensorFlow outputs as Cortex's client returned them, checked against the real thing: the TensorProto that TF
Serving filled (the dtype's typed value field) turned into a dict by protobuf's `json_format.MessageToDict`,
then the value list Cortex picked (`outputs[key][DTYPE_TO_VALUE_KEY[dtype]]`, Cortex v0.22 lib/model/tfs.py)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workers.tensorflow_client import cortex_outputs, cortex_values

pytestmark = pytest.mark.tensorflow

# numpy dtype -> (TensorProto dtype, typed value field that TF Serving's AsProtoField fills)
FIELDS = {
    "float32": ("DT_FLOAT", "float_val"),
    "float64": ("DT_DOUBLE", "double_val"),
    "int32": ("DT_INT32", "int_val"),
    "int16": ("DT_INT16", "int_val"),
    "int8": ("DT_INT8", "int_val"),
    "uint8": ("DT_UINT8", "int_val"),
    "uint16": ("DT_UINT16", "int_val"),
    "int64": ("DT_INT64", "int64_val"),
    "uint32": ("DT_UINT32", "uint32_val"),
    "uint64": ("DT_UINT64", "uint64_val"),
    "bool": ("DT_BOOL", "bool_val"),
    "float16": ("DT_HALF", "half_val"),
    "complex64": ("DT_COMPLEX64", "scomplex_val"),
    "complex128": ("DT_COMPLEX128", "dcomplex_val"),
}


def message_to_dict_values(array: np.ndarray) -> list:
    """What Cortex's client returned for one output: the proto's value field through MessageToDict."""
    from google.protobuf import json_format
    from tensorflow.core.framework import tensor_pb2, types_pb2

    flat = array.reshape(-1)
    if flat.dtype == object:
        dtype, field, values = "DT_STRING", "string_val", flat.tolist()
    else:
        dtype, field = FIELDS[flat.dtype.name]
        if flat.dtype.kind == "c":
            values = flat.view(np.float32 if flat.dtype == np.complex64 else np.float64).tolist()
        elif flat.dtype == np.float16:
            values = flat.view(np.uint16).tolist()
        else:
            values = flat.tolist()
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DataType.Value(dtype), **{field: values})
    as_dict = json_format.MessageToDict(proto)
    camel = "".join(w.capitalize() if i else w for i, w in enumerate(field.split("_")))
    return as_dict.get(camel, [])  # an empty field is left out of the dict (Cortex then raised KeyError)


def same(ours: list, theirs: list) -> bool:
    return len(ours) == len(theirs) and all(
        type(a) is type(b) and (a == b or (a != a and b != b)) for a, b in zip(ours, theirs))


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(FIELDS)).flatmap(lambda name: hnp.arrays(np.dtype(name), shapes)))
def test_numeric_outputs_match_message_to_dict(array):
    ours, theirs = cortex_values(array), message_to_dict_values(array)
    assert same(ours, theirs), (array.dtype, ours, theirs)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=6))
def test_string_outputs_are_base64_as_message_to_dict_gave_them(items):
    array = np.array(items, dtype=object)  # an object array of bytes, as TensorFlow gives
    assert same(cortex_values(array), message_to_dict_values(array))


@pytest.mark.parametrize("value", [0.1, 0.9, 1 / 3, 3.4e38, 1e-45, 1.17e-38, 2.5e-40, -0.0, float("nan"),
                                   float("inf"), float("-inf")])
def test_float32_edge_values(value):
    array = np.array([value], dtype=np.float32)
    assert same(cortex_values(array), message_to_dict_values(array))


def test_what_a_cortex_predictor_sees():
    """The examples' own uses: int(prediction["class_ids"][0]) on an int64 [1, 1] output; a float32 [1, 3]
    output flat; strings base64."""
    out = cortex_outputs({
        "class_ids": np.array([[2]], dtype=np.int64),
        "probabilities": np.array([[0.1, 0.2, 0.7]], dtype=np.float32),
        "classes": np.array([[b"2"]], dtype=object),
    })
    assert out == {"class_ids": ["2"], "probabilities": [0.1, 0.2, 0.7], "classes": ["Mg=="]}
    assert int(out["class_ids"][0]) == 2
    assert base64.b64decode(out["classes"][0]) == b"2"
