"""Tensors as the Open Inference Protocol (KServe V2) carries them: its datatypes, and the three encodings a
tensor's values come in (JSON `data`, typed protobuf `contents`, raw little-endian bytes), to and from numpy.

One module for the REST routes, the binary tensor extension and gRPC, so a tensor decodes the same whichever
way it arrived. Every error is a `BadRequest` naming the tensor and what it should have been.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from workers.errors import BadRequest

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"}

# The field of the protobuf InferTensorContents that holds each datatype's values (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LENGTH = struct.Struct("<I")


_DATATYPES: dict[np.dtype, str] = {}  # every dtype seen, native or not, with its datatype


def datatype_of(dtype: Any) -> str:
    """The V2 datatype of a numpy dtype; strings and bytes (object, `S`, `U`) are BYTES."""
    known = _DATATYPES.get(dtype)
    if known is not None:
        return known
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        name = "BYTES"
    else:
        name = _NUMPY_TO_V2.get(dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype)
        if name is None:
            raise BadRequest(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    _DATATYPES[dtype] = name
    return name


def numpy_dtype(datatype: str, tensor: str) -> np.dtype:
    try:
        return V2_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        known = ", ".join(V2_TO_NUMPY)
        raise BadRequest(f"tensor '{tensor}': datatype {datatype!r} is not supported (use one of {known})") from None


def check_shape(shape: Any, tensor: str) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in shape):
        raise BadRequest(f"tensor '{tensor}': shape must be a list of non-negative integers, got {shape!r}")
    return list(shape)


def _count(shape: list[int]) -> int:
    return math.prod(shape)


def from_json(datatype: str, shape: Any, data: Any, tensor: str) -> np.ndarray:
    """A tensor from the REST body's `data`: nested or flat, in row-major order; BYTES elements are strings
    (UTF-8)."""
    shape = check_shape(shape, tensor)
    dtype = numpy_dtype(datatype, tensor)
    if data is None:
        raise BadRequest(f"tensor '{tensor}' has no data (send `data`, or its bytes with the binary extension)")
    if datatype == "BYTES":
        flat = _flatten(data)
        try:
            values = [v.encode() for v in flat]
        except AttributeError:
            raise BadRequest(f"tensor '{tensor}': BYTES data must be strings") from None
        array = np.empty(len(values), dtype=object)
        array[:] = values
    else:
        try:
            # What the JSON holds decides what it may become: no booleans for numbers, no fractions for integers.
            probe = np.asarray(data)
            kind = probe.dtype.kind if probe.size else ("b" if datatype == "BOOL" else "i")  # [] fits any type
            if kind not in "biuf" or (kind == "b") != (datatype == "BOOL"):
                raise ValueError(f"{datatype} data must be {'booleans' if datatype == 'BOOL' else 'numbers'}")
            if kind == "f" and datatype.startswith(("INT", "UINT")):
                raise ValueError("it holds non-integer values")
            array = np.asarray(data, dtype=dtype).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            raise BadRequest(f"tensor '{tensor}' is {datatype}: its data does not fit ({e})") from None
    return _shaped(array, shape, tensor)


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    out: list = []
    for v in data:
        out.extend(_flatten(v))
    return out


def _shaped(flat: np.ndarray, shape: list[int], tensor: str) -> np.ndarray:
    if flat.size != _count(shape):
        raise BadRequest(f"tensor '{tensor}' has {flat.size} values; shape {shape} needs {_count(shape)}")
    return flat.reshape(shape)


def from_contents(datatype: str, shape: Any, values: Any, tensor: str) -> np.ndarray:
    """A tensor from gRPC's typed `contents` (a flat sequence of the datatype's field)."""
    shape = check_shape(shape, tensor)
    dtype = numpy_dtype(datatype, tensor)
    if datatype == "BYTES":
        flat = np.empty(len(values), dtype=object)
        flat[:] = [bytes(v) for v in values]
    else:
        try:
            flat = np.asarray(values, dtype=dtype).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            raise BadRequest(f"tensor '{tensor}' is {datatype}: its contents do not fit ({e})") from None
    return _shaped(flat, shape, tensor)


def from_raw(datatype: str, shape: Any, raw: bytes | memoryview, tensor: str) -> np.ndarray:
    """A tensor from raw bytes (the binary extension, gRPC's `raw_input_contents`): row-major little-endian
    values; BYTES as each element's 4-byte little-endian length followed by its bytes."""
    shape = check_shape(shape, tensor)
    dtype = numpy_dtype(datatype, tensor)
    n = _count(shape)
    if datatype == "BYTES":
        return _shaped(_split_bytes(raw, n, tensor), shape, tensor)
    expected = n * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(f"tensor '{tensor}' has {len(raw)} bytes; {datatype} of shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _split_bytes(raw: bytes | memoryview, n: int, tensor: str) -> np.ndarray:
    view = memoryview(raw)
    out = np.empty(n, dtype=object)
    at = 0
    for i in range(n):
        if at + 4 > len(view):
            raise BadRequest(f"tensor '{tensor}': its BYTES data ends after {i} of {n} elements")
        (length,) = _LENGTH.unpack_from(view, at)
        at += 4
        if at + length > len(view):
            raise BadRequest(f"tensor '{tensor}': element {i} claims {length} bytes, past the end of its data")
        out[i] = bytes(view[at:at + length])
        at += length
    if at != len(view):
        raise BadRequest(f"tensor '{tensor}': {len(view) - at} bytes left over after its {n} BYTES elements")
    return out


def as_bytes_elements(array: np.ndarray) -> list[bytes]:
    """A BYTES tensor's elements as bytes: str is UTF-8 encoded, anything else by its str()."""
    out = []
    for v in array.reshape(-1).tolist():
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, str):
            out.append(v.encode())
        else:
            out.append(str(v).encode())
    return out


def to_raw(array: np.ndarray) -> bytes:
    """The raw encoding of a tensor (see `from_raw`)."""
    if datatype_of(array.dtype) == "BYTES":
        return b"".join(_LENGTH.pack(len(b)) + b for b in as_bytes_elements(array))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json(array: np.ndarray) -> list:
    """A tensor's values as the REST body's flat `data`; BYTES elements as strings (bytes that are not UTF-8
    cannot be JSON strings: the binary extension carries those)."""
    if datatype_of(array.dtype) == "BYTES":
        try:
            return [b.decode() for b in as_bytes_elements(array)]
        except UnicodeDecodeError:
            raise BadRequest("a BYTES output is not UTF-8 text: request it with binary_data") from None
    return array.reshape(-1).tolist()


def to_contents(array: np.ndarray) -> tuple[str, list]:
    """(InferTensorContents field, flat values) for gRPC's typed contents."""
    datatype = datatype_of(array.dtype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"{datatype} outputs travel as raw bytes only: send the inputs as raw_input_contents")
    if datatype == "BYTES":
        return field, as_bytes_elements(array)
    return field, array.reshape(-1).tolist()
