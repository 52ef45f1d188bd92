"""ONNX versions installed with their weights as external data, mapped rather than parsed and copied.

An ONNX file with embedded weights makes onnxruntime parse the whole protobuf and copy every initializer on
every load (each disk hit, each restart). The same model with its initializers as external data lets
onnxruntime map them from the file instead. So a version that arrives with embedded weights is rewritten
once, as it is installed: the downloaded file is kept whole, renamed `<name>.onnx.weights`, and a new
`<name>.onnx` holds the graph, with each large initializer pointing at the span of the kept file where its
`raw_data` already lies. No weight is copied, and the rewrite reads only the protobuf's framing, never its
payloads, so it costs milliseconds whatever the model's size.

The scan walks the protobuf wire format (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.name = 8,
raw_data = 9, external_data = 13, data_location = 14) without decoding payloads. A version that already has
external data, no large initializer, or anything the scan does not expect is left exactly as it came.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from replica.disktree import safe_relpath

log = logging.getLogger(__name__)

WEIGHTS_SUFFIX = ".weights"  # model.onnx -> model.onnx.weights: the downloaded file, kept whole
MIN_FILE_BYTES = 1 << 20  # smaller files load in milliseconds anyway
MIN_TENSOR_BYTES = 1024  # initializers smaller than this stay in the graph (as onnx's own save does)

_GRAPH, _INITIALIZER = 7, 5
_NAME, _RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 8, 9, 13, 14
_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5


class NotRewritable(Exception):
    """The file is not one this module rewrites (why is in the message); it is served as it came."""


@dataclass(frozen=True)
class Rewritten:
    graph: Path  # the new .onnx, the graph alone
    weights: Path  # the original file, renamed
    graph_sha256: str
    tensors: int  # initializers now read from the weights file


def _varint(buf, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf):
            raise NotRewritable("truncated protobuf")
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise NotRewritable("malformed varint")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, wire type, start of the field's key, start of its payload, end of the field)."""
    at = start
    while at < end:
        key_at = at
        key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, nxt = _varint(buf, at)
            yield number, wire, key_at, at, nxt
            at = nxt
        elif wire == _LEN:
            length, payload = _varint(buf, at)
            nxt = payload + length
            if nxt > end:
                raise NotRewritable("a field runs past its message")
            yield number, wire, key_at, payload, nxt
            at = nxt
        elif wire == _I64:
            yield number, wire, key_at, at, at + 8
            at += 8
        elif wire == _I32:
            yield number, wire, key_at, at, at + 4
            at += 4
        else:
            raise NotRewritable(f"unexpected wire type {wire}")
    if at != end:
        raise NotRewritable("a message runs past its end")


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    """A StringStringEntryProto (key = 1, value = 2) as TensorProto.external_data holds it."""
    return _len_field(_EXTERNAL_DATA, _len_field(1, key.encode()) + _len_field(2, value.encode()))


def _tensor(buf, start: int, end: int, location: str) -> tuple[bytes, bool]:
    """The TensorProto at [start, end) with its raw_data replaced by a reference into the original file; the
    tensor's own bytes and False when it stays as it is."""
    raw = None
    for number, wire, key_at, payload, nxt in _fields(buf, start, end):
        if number in (_EXTERNAL_DATA, _DATA_LOCATION):
            raise NotRewritable("the model already has external data")
        if number == _RAW_DATA and wire == _LEN:
            raw = (key_at, payload, nxt)
    if raw is None or raw[2] - raw[1] < MIN_TENSOR_BYTES:
        return bytes(buf[start:end]), False
    key_at, payload, nxt = raw
    out = (bytes(buf[start:key_at]) + bytes(buf[nxt:end])
           + _entry("location", location) + _entry("offset", str(payload)) + _entry("length", str(nxt - payload))
           + _encode_varint(_DATA_LOCATION << 3 | _VARINT) + _encode_varint(1))
    return out, True


def graph_bytes(buf, location: str) -> tuple[bytes, int]:
    """The ModelProto `buf` with its large initializers pointing into `location` (`buf` itself, renamed);
    how many were moved."""
    graph = None
    for number, wire, key_at, payload, nxt in _fields(buf, 0, len(buf)):
        if number == _GRAPH and wire == _LEN:
            if graph is not None:
                raise NotRewritable("more than one graph field")
            graph = (key_at, payload, nxt)
    if graph is None:
        raise NotRewritable("no graph")
    key_at, g_start, g_end = graph
    parts, moved = [], 0
    for number, wire, f_key, f_payload, f_end in _fields(buf, g_start, g_end):
        if number == _INITIALIZER and wire == _LEN:
            tensor, changed = _tensor(buf, f_payload, f_end, location)
            moved += changed
            parts.append(_len_field(_INITIALIZER, tensor))
        else:
            parts.append(bytes(buf[f_key:f_end]))
    if not moved:
        raise NotRewritable("no initializer large enough to map")
    new_graph = _len_field(_GRAPH, b"".join(parts))
    return bytes(buf[:key_at]) + new_graph + bytes(buf[g_end:]), moved


def rewrite(path: Path) -> Rewritten:
    """Rewrite one embedded-weights .onnx file in place (see the module's doc); NotRewritable leaves it as it
    was. The graph is written beside it first and renamed over it last, so a failure at any step leaves
    either the original or the finished pair."""
    path = Path(path)
    if path.stat().st_size < MIN_FILE_BYTES:
        raise NotRewritable("small enough to load as it is")
    weights = path.with_name(path.name + WEIGHTS_SUFFIX)
    if weights.exists():
        raise NotRewritable(f"{weights.name} is already one of the version's files")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        data, moved = graph_bytes(buf, weights.name)
    tmp = path.with_name(path.name + ".graph")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.link(path, weights)
    os.replace(tmp, path)
    return Rewritten(path, weights, hashlib.sha256(data).hexdigest(), moved)


def installed_files(staging: Path, files: list[list]) -> list[list]:
    """Rewrite each embedded-weights .onnx file at the root of a downloaded version (staged, not yet
    installed) and return the manifest's file list for what is now on disk: `[key, size, tag, sha256]` per
    file, the rewritten graph in place of the download, and the download itself under its new name, with the
    size, tag and digest it was fetched with (its bytes are unchanged). Anything not rewritable stays as it
    came, which is always a working version."""
    out: list[list] = []
    for key, size, tag, sha in files:
        if "/" in key or not key.endswith(".onnx"):
            out.append([key, size, tag, sha])
            continue
        path = staging / safe_relpath(key)
        try:
            done = rewrite(path)
        except NotRewritable as e:
            log.debug("%s stays as it came: %s", key, e)
            out.append([key, size, tag, sha])
            continue
        except OSError as e:
            log.warning("%s could not be rewritten to map its weights (%s); it is served as it came", key, e)
            out.append([key, size, tag, sha])
            continue
        log.info("%s: %d initializers mapped from %s instead of parsed at each load", key, done.tensors,
                 done.weights.name)
        out.append([key, done.graph.stat().st_size, None, done.graph_sha256])
        out.append([key + WEIGHTS_SUFFIX, size, tag, sha])
    return out
