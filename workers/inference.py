"""The Open Inference Protocol (KServe V2) over a worker's Runtime, whatever carries it (REST or gRPC).

What `infer` runs depends on the predictor type:

- ONNX and TensorFlow: the model itself, as Triton does: the onnxruntime session, or the SavedModel's
  signature (the one the spec selects), with the request's tensors named as the model's inputs, checked
  against the model's datatypes and shapes, and batched with other requests when server_side_batching is on.
  The user's predictor class is not called: its `predict` takes Cortex's JSON, not tensors.
- Python: the predictor's `predict`, as MLServer's custom runtimes are called: `payload` is a dict of the
  request's tensors (numpy arrays by input name; BYTES as arrays of bytes), `query_params` holds the route's
  model name as `model` (and `version` when the route names one), which is how a Cortex multi-model
  predictor picks its model, and `headers` the request's headers. What `predict` returns becomes the
  outputs: a dict gives one output per key, anything else one output named `output0`; each value is
  converted with numpy (strings become BYTES).

Metadata comes from the loaded model: the session's inputs and outputs, the signature's. A Python predictor
declares no tensors, so its metadata lists none. Everything raises the replica's HTTP errors
(workers.errors), which each protocol maps to its own status.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers import tensors
from workers.errors import BadRequest, ModelNotFound, Unavailable
from workers.onnx_client import ONNX_TO_NUMPY
from workers.records import Record
from workers.runtime import Runtime

SERVER_NAME = "model-replica"
EXTENSIONS = ("binary_tensor_data", "model_repository")
PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel", "python": "python"}
PYTHON_OUTPUT = "output0"  # the output's name when a Python predictor returns something other than a dict


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # -1 for a variable dimension


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass
class InferResult:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # in the model's order, or as requested


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("model-replica")
    except PackageNotFoundError:
        return "0"


class Inference:
    """One worker's V2 operations; every call that touches a model pins it in its own request scope."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.registry = runtime.registry
        self.kind = runtime.api.predictor.type
        self.caching = runtime.api.predictor.cache_size is not None
        self.has_models = bool(runtime.api.predictor.sources)  # a Python predictor may have none

    # -- health and metadata ---------------------------------------------------------------------------------
    def server_live(self) -> bool:
        return self.runtime.supervisor_alive()[0]

    def server_ready(self) -> bool:
        return (self.runtime.not_ready_reason() is None and self.registry.initial_sync_done.is_set()
                and self.server_live())

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def _rows(self, name: str, version: str | None) -> list[dict]:
        """The model's version rows (GET /v1/models/NAME), only `version`'s when given; 404 when unknown."""
        return _version_rows(self._all_rows(name), name, version)

    def _all_rows(self, name: str) -> list[dict]:
        if self.kind == "python" and not self.has_models and name == self.runtime.api.name:
            return [{"version": "1", "state": "AVAILABLE", "memory": True, "upstream": False, "disk": False,
                     "error": None}]
        if not self.registry.known(name):
            raise ModelNotFound(f"model '{name}' not found")
        return self.registry.status(name)[0]["model_version_status"]

    def _servable(self, row: dict) -> bool:
        """In memory, or (with model caching) brought in by the next request: a request would be answered."""
        if row["memory"]:
            return True
        return self.caching and row["upstream"] and row["state"] != "END"

    def model_ready(self, name: str, version: str | None) -> bool:
        return self.server_ready() and any(self._servable(r) for r in self._rows(name, version))

    def metadata(self, name: str, version: str | None) -> ModelInfo:
        rows = self._all_rows(name)  # one status render for the check and the versions
        _version_rows(rows, name, version)
        versions = sorted({r["version"] for r in rows if r["upstream"] or r["disk"] or r["memory"]}, key=int)
        platform = PLATFORMS[self.kind]
        if self.kind == "python":
            return ModelInfo(name, versions, platform, [], [])
        with self.registry.request_scope():
            lv = self._get(name, version)
            inputs, outputs = model_signature(self.kind, lv)
        return ModelInfo(name, versions, platform, inputs, outputs)

    def _get(self, name: str, version: str | None) -> Record:
        self.runtime.wait_until_loaded()
        return self.registry.get(name, version if version is not None else "latest")

    # -- inference ---------------------------------------------------------------------------------------------
    def infer(self, name: str, version: str | None, inputs: dict[str, np.ndarray], outputs: list[str] | None,
              headers: dict[str, str] | None = None) -> InferResult:
        """Run the model (or the Python predictor) on `inputs`; only the `outputs` named, when given. The
        registry's own hand-out answers an unknown model or version (404), from memory on a hit."""
        if version is not None:
            _version_number(version)
        if self.kind == "python":
            return self._infer_python(name, version, inputs, outputs, headers or {})
        self.runtime.wait_until_loaded()
        with self.registry.request_scope():
            lv = self.registry.get(name, version if version is not None else "latest")
            specs_in, specs_out = model_signature(self.kind, lv)
            feeds = _checked_inputs(lv.name, specs_in, inputs)
            out_names = [s.name for s in specs_out]
            wanted = _checked_outputs(lv.name, out_names, outputs)
            client = self.runtime.client
            if self.kind == "onnx":
                feeds = {n: _onnx_text(lv.name, n, a) if a.dtype.kind == "O" else a for n, a in feeds.items()}
                arrays = dict(zip(out_names, client.run_arrays(lv, feeds)))
            else:
                arrays = client.run_arrays(lv, feeds)
            return InferResult(lv.name, str(lv.version), {n: np.asarray(arrays[n]) for n in wanted})

    def _infer_python(self, name: str, version: str | None, inputs: dict[str, np.ndarray],
                      outputs: list[str] | None, headers: dict[str, str]) -> InferResult:
        if not (self.registry.known(name) if self.has_models else name == self.runtime.api.name):
            raise ModelNotFound(f"model '{name}' not found")
        self.runtime.wait_until_loaded()
        query = {"model": name}
        if version is not None:
            query["version"] = version
        with self.registry.request_scope() as scope:
            result = self.runtime.predict({"payload": inputs, "query_params": query, "headers": headers})
            used = scope.pinned[0] if scope.pinned else None
        arrays = python_outputs(result)
        wanted = _checked_outputs(name, list(arrays), outputs)
        served = str(used.version) if used is not None and used.name == name else (version or "1")
        return InferResult(name, served, {n: arrays[n] for n in wanted})

    # -- the model repository extension ------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict]:
        """One entry per model version: READY in memory, LOADING, UNLOADING, or UNAVAILABLE with the reason."""
        out = []
        if self.kind == "python" and not self.has_models:
            return [{"name": self.runtime.api.name, "version": "1", "state": "READY", "reason": ""}]
        for model in self.registry.status():
            for row in model["model_version_status"]:
                state, reason = self._index_state(row)
                if ready_only and state != "READY":
                    continue
                out.append({"name": model["name"], "version": row["version"], "state": state, "reason": reason})
        return out

    def _index_state(self, row: dict) -> tuple[str, str]:
        if row["memory"] and row["state"] == "AVAILABLE":
            return "READY", ""
        if row["state"] in ("LOADING", "UNLOADING"):
            return row["state"], ""
        if row["error"]:
            return "UNAVAILABLE", row["error"]
        if self.caching:
            return "UNAVAILABLE", "not in memory: loaded by its first request or by the repository's load"
        return "UNAVAILABLE", "not loaded yet"

    def load(self, name: str) -> None:
        """With model caching, bring the model's latest version into memory now (a warm-up before traffic
        moves to this replica), evicting the least recently used; without, every model on disk is in memory
        already: succeed when it is, say why when it is not."""
        rows = self._all_rows(name)
        if self.kind == "python" and not self.has_models:
            return
        if self.caching:
            with self.registry.request_scope():
                self._get(name, None)
            return
        if any(r["memory"] for r in rows):
            return
        reasons = "; ".join(f"version {r['version']}: {r['error']}" for r in rows if r["error"])
        raise Unavailable(f"model '{name}' is not in memory" + (f" ({reasons})" if reasons else
                                                                  ": it is still being fetched or loaded"))

    def unload(self, name: str) -> None:
        """With model caching, evict the model's versions from memory (they stay on disk and in the catalogue,
        and the next request brings the latest back); without, the replica serves every model on disk from
        memory, so it cannot unload one."""
        self._all_rows(name)
        if not self.caching:
            raise BadRequest(f"model '{name}' cannot be unloaded: without model caching (predictor.models."
                             "cache_size) every model on disk is served from memory; remove it upstream instead")
        self.registry.evict(name)


def _version_rows(rows: list[dict], name: str, version: str | None) -> list[dict]:
    """`rows` (a model's version rows), only `version`'s when given; 404 when it has none."""
    if version is None:
        return rows
    number = _version_number(version)
    picked = [r for r in rows if r["version"] == str(number)]
    if not picked:
        have = ", ".join(r["version"] for r in rows) or "none"
        raise ModelNotFound(f"model '{name}' has no version {version} (versions: {have})")
    return picked


def _version_number(version: str) -> int:
    if not (isinstance(version, str) and version.isascii() and version.isdigit()):
        raise BadRequest(f"invalid model version {version!r}: use a non-negative integer")
    return int(version)


# Per loaded copy: (id of its model object, its signature), dropped with the record.
_SIGNATURES: weakref.WeakKeyDictionary[Record, tuple[int, tuple]] = weakref.WeakKeyDictionary()


def model_signature(kind: str, lv: Record) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A loaded version's inputs and outputs as V2 tensor metadata, worked out once per loaded copy."""
    known = _SIGNATURES.get(lv)
    if known is None or known[0] != id(lv.model):
        known = _SIGNATURES[lv] = (id(lv.model), _signature(kind, lv.model))
    return known[1]


def _signature(kind: str, model: dict) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if kind == "onnx":
        return ([TensorSpec(i.name, _onnx_datatype(i.type), _dims(i.shape)) for i in model["signatures"]],
                [TensorSpec(o.name, _onnx_datatype(o.type), _dims(o.shape)) for o in model["outputs"]])
    # Sorted by name, as TensorFlow flattens a signature's inputs: the order a dict happens to have is no contract.
    return ([TensorSpec(n, _tf_datatype(s.dtype), _tf_dims(s.shape)) for n, s in sorted(model["inputs"].items())],
            [TensorSpec(n, _tf_datatype(s.dtype), _tf_dims(s.shape)) for n, s in model["outputs"].items()])


def _onnx_datatype(onnx_type: str) -> str:
    dtype = ONNX_TO_NUMPY.get(onnx_type)
    if dtype is None:
        return onnx_type.removeprefix("tensor(").removesuffix(")").upper()
    return tensors.datatype_of(dtype)


def _tf_datatype(dtype: Any) -> str:
    if dtype.name == "string":
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    return tensors.datatype_of(dtype.as_numpy_dtype)


def _dims(shape: Any) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in (shape or [])]


def _tf_dims(shape: Any) -> list[int]:
    if shape.rank is None:
        return [-1]
    return [-1 if d is None else int(d) for d in shape.as_list()]


def _checked_inputs(model: str, specs: list[TensorSpec], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request's tensors, each checked against the model's input of that name: every input given, none
    unknown, the same datatype, the same rank and every fixed dimension equal (no reshaping: a wrong shape is
    the client's error to hear about)."""
    by_name = {s.name: s for s in specs}
    unknown = [n for n in inputs if n not in by_name]
    if unknown:
        raise BadRequest(f"model '{model}' has no input {', '.join(repr(n) for n in unknown)} "
                         f"(inputs: {', '.join(by_name)})")
    missing = [n for n in by_name if n not in inputs]
    if missing:
        raise BadRequest(f"model '{model}' expects input(s) {', '.join(repr(n) for n in missing)} as well")
    for spec in specs:
        array = inputs[spec.name]
        got = tensors.datatype_of(array.dtype)
        if got != spec.datatype:
            raise BadRequest(f"model '{model}' input '{spec.name}' is {spec.datatype}, got {got}")
        if spec.shape != [-1] or len(spec.shape) == array.ndim:
            if len(spec.shape) != array.ndim or any(d not in (-1, n) for d, n in zip(spec.shape, array.shape)):
                raise BadRequest(f"model '{model}' input '{spec.name}' expects shape {spec.shape}, "
                                 f"got {list(array.shape)}")
    return {s.name: inputs[s.name] for s in specs}


def _onnx_text(model: str, name: str, array: np.ndarray) -> np.ndarray:
    """BYTES for an ONNX string input: onnxruntime takes str elements (it would feed a bytes object's repr)."""
    out = np.empty(array.shape, dtype=object)
    try:
        out.reshape(-1)[:] = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
    except UnicodeDecodeError:
        raise BadRequest(f"model '{model}' input '{name}' is an ONNX string tensor: its elements must be UTF-8") from None
    return out


def _checked_outputs(model: str, names: list[str], requested: list[str] | None) -> list[str]:
    if not requested:
        return names
    unknown = [n for n in requested if n not in names]
    if unknown:
        raise BadRequest(f"model '{model}' has no output {', '.join(repr(n) for n in unknown)} "
                         f"(outputs: {', '.join(names)})")
    return list(dict.fromkeys(requested))


def python_outputs(result: Any) -> dict[str, np.ndarray]:
    """A Python predictor's answer as named tensors (see the module's doc)."""
    items = result.items() if isinstance(result, dict) else [(PYTHON_OUTPUT, result)]
    out = {}
    for key, value in items:
        array = np.asarray(value)
        if array.dtype.kind in "SU":
            array = array.astype(object)
        try:
            tensors.datatype_of(array.dtype)
        except BadRequest:
            raise BadRequest(f"the predictor's output '{key}' ({array.dtype}) is not a tensor") from None
        out[str(key)] = array
    return out
