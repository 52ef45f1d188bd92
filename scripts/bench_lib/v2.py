"""Open Inference Protocol (KServe V2) requests and answers on the client side, for the V2 benchmark figure and
the differential test against MLServer (tests/test_v2_mlserver.py): a JSON body, the same request with Triton's
binary tensor extension, and the outputs of an answer in either form.

Written from the protocol's text, not from the replica's own codec (workers/tensors.py), so that a test built
on it checks the replica against the protocol rather than against itself.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Output:
    """One output tensor of an answer: its values shaped as it says (BYTES as a numpy array of str)."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


def datatype(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array: strings and bytes are BYTES."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    return next(name for name, t in DATATYPES.items() if np.dtype(t) == array.dtype)


def json_request(inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
    """The JSON body of an infer request: each input's values flat, in row-major order (BYTES as strings);
    `outputs` names the outputs wanted (None: every output)."""
    body: dict[str, Any] = {"inputs": [
        {"name": name, "datatype": datatype(a), "shape": list(a.shape), "data": _json_data(a)}
        for name, a in inputs.items()]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def _json_data(array: np.ndarray) -> list:
    if datatype(array) == "BYTES":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1).tolist()]
    return array.reshape(-1).tolist()


def binary_request(inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                   binary_outputs: bool = False) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the same request with every input's values as raw bytes after the JSON header, and,
    with `binary_outputs`, the outputs asked for as raw bytes too."""
    header: dict[str, Any] = {"inputs": []}
    raws = []
    for name, a in inputs.items():
        raw = _raw(a)
        raws.append(raw)
        header["inputs"].append({"name": name, "datatype": datatype(a), "shape": list(a.shape),
                                 "parameters": {"binary_data_size": len(raw)}})
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    elif binary_outputs:
        header["parameters"] = {"binary_data_output": True}
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(raws), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def _raw(array: np.ndarray) -> bytes:
    """Row-major little-endian values; BYTES as each element's 4-byte little-endian length, then its bytes."""
    if datatype(array) == "BYTES":
        elements = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
        return b"".join(_LENGTH.pack(len(e)) + e for e in elements)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def answer(body: bytes, headers: dict[str, str]) -> list[Output]:
    """The outputs of an infer answer, in its order: JSON, or a JSON header followed by the raw bytes of the
    outputs that carry a `binary_data_size` (the length of the header in `Inference-Header-Content-Length`)."""
    length = next((int(v) for k, v in headers.items() if k.lower() == HEADER_LENGTH.lower()), len(body))
    doc = json.loads(body[:length])
    at = length
    out = []
    for o in doc["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = _from_json(o["datatype"], o["data"])
        else:
            data = _from_raw(o["datatype"], body[at:at + size])
            at += size
        out.append(Output(o["name"], o["datatype"], list(o["shape"]), data.reshape(o["shape"])))
    if at != len(body):
        raise ValueError(f"{len(body) - at} bytes after the answer's last binary output")
    return out


def _from_json(dt: str, data: list) -> np.ndarray:
    if dt == "BYTES":
        return np.array(data, dtype=object)
    return np.asarray(data, dtype=DATATYPES[dt])


def _from_raw(dt: str, raw: bytes) -> np.ndarray:
    if dt != "BYTES":
        return np.frombuffer(raw, dtype=np.dtype(DATATYPES[dt]).newbyteorder("<"))
    elements, at = [], 0
    while at < len(raw):
        (n,) = _LENGTH.unpack_from(raw, at)
        elements.append(raw[at + 4:at + 4 + n].decode())
        at += 4 + n
    return np.array(elements, dtype=object)
