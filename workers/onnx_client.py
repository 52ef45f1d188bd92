"""The client an ONNXPredictor receives: onnxruntime sessions, created after fork in each worker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from workers.batching import Batcher, run_stacked, stack_key, stackable
from workers.errors import BadRequest
from workers.onnx_prepack import PREPACKING_KEY, OnnxModel, Packer
from workers.records import Record
from workers.registry import ModelRegistry

log = logging.getLogger(__name__)

ONNX_TO_NUMPY = {
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def execution_providers(config: dict) -> list[str]:
    """CUDA when the predictor's config asks for a GPU and onnxruntime has it, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wants_gpu = str(config.get("device", "auto")).lower() in ("auto", "cuda", "gpu")
    if wants_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# onnxruntime's session settings the replica changes from onnxruntime's own defaults. Its thread pools spin
# between runs by default, which keeps a core busy per session while requests arrive apart over HTTP, and
# slows everything else the process does (the other models' runs, a miss's download and load): off.
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def session_config(config: dict) -> dict[str, str]:
    """The session config entries every session of this API gets: SESSION_CONFIG, with the predictor's
    `config.onnx_session_config` (a mapping of onnxruntime's session config keys to values) over it."""
    extra = config.get("onnx_session_config") or {}  # checked with the spec (replica/spec.py)
    return {**SESSION_CONFIG, **{k: str(v) for k, v in extra.items()}}


def onnx_loader(providers: list[str], entries: dict[str, str] | None = None, packer: Packer | None = None):
    """(model_path, name, version) -> the version's OnnxModel. With a `packer`, the session is created with
    pre-packing off and the packer swaps in a pre-packed one later (workers/onnx_prepack.py)."""
    entries = SESSION_CONFIG if entries is None else entries

    def load(model_path: str, name: str, version: int) -> OnnxModel:
        files = sorted(Path(model_path).glob("*.onnx"))
        if len(files) != 1:
            raise ValueError(f"expected exactly one .onnx file in the version, found {len(files)}")
        if packer is None:
            return _model(_session(files[0], entries, providers))
        model = _model(_session(files[0], {**entries, PREPACKING_KEY: "1"}, providers))
        packer.add(model, name, version, lambda: _session(files[0], entries, providers))
        return model

    return load


def _session(path: Path, entries: dict[str, str], providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=providers)


def _model(session) -> OnnxModel:
    inputs = session.get_inputs()
    return OnnxModel(
        session=session,
        signatures=inputs,
        outputs=session.get_outputs(),
        input_signatures={
            i.name: {"shape": list(i.shape), "type": np.dtype(ONNX_TO_NUMPY.get(i.type, np.object_)).name}
            for i in inputs
        },
    )


class ONNXClient:
    def __init__(self, registry: ModelRegistry, batcher: Batcher | None = None):
        self._registry = registry
        self._batcher = batcher  # server_side_batching: concurrent predict calls share one session.run

    def get_model(self, model_name: str | None = None, model_version: Any = "latest") -> dict:
        """{"session": InferenceSession, "signatures": its inputs, "input_signatures": {name: {shape, type}}}."""
        return self._registry.get(model_name, model_version).model

    def predict(self, model_input: Any, model_name: str | None = None, model_version: Any = "latest") -> list:
        """Run the model; returns the session's outputs (a list of numpy arrays, in output order)."""
        lv = self._registry.get(model_name, model_version)
        return self.run_arrays(lv, to_feeds(model_input, lv.model["signatures"], lv.name))  # a bad input: 400 here

    def run_arrays(self, lv: Record, feeds: dict[str, np.ndarray]) -> list:
        """Run a pinned version on inputs already typed and shaped; its outputs in output order, batched with
        other requests when server_side_batching is on. The V2 routes call this directly."""
        if self._batcher is not None and stackable(feeds, _batch_dims(lv.model["signatures"])):
            key = (lv.name, lv.version, lv, None, stack_key(feeds))
            return self._batcher.submit(key, feeds, lambda items: run_stacked(items, lambda f: _run(lv, f)))
        return _run(lv, feeds)


def _run(lv: Record, feeds: dict[str, np.ndarray]) -> list:
    try:
        return lv.model["session"].run(None, feeds)
    except Exception as e:
        if type(e).__name__ in ("InvalidArgument", "Fail") or "INVALID_ARGUMENT" in str(e):
            raise BadRequest(f"model '{lv.name}' rejected the input: {e}") from e
        raise


def _batch_dims(inputs: list) -> dict[str, bool]:
    """Per input, whether its first dimension is variable (symbolic or unknown): a batch dimension."""
    return {i.name: bool(i.shape) and not isinstance(i.shape[0], int) for i in inputs}


def to_feeds(model_input: Any, inputs: list, model_name: str) -> dict[str, np.ndarray]:
    """A dict keyed by input name or, for a single-input model, the raw value, as typed numpy arrays."""
    names = [i.name for i in inputs]
    if isinstance(model_input, dict):
        missing = [n for n in names if n not in model_input]
        if missing:
            raise BadRequest(f"model '{model_name}' input is missing key(s) {', '.join(missing)} (expected: {', '.join(names)})")
        return {i.name: _to_array(model_input[i.name], i, model_name) for i in inputs}
    if len(inputs) != 1:
        raise BadRequest(f"model '{model_name}' has {len(inputs)} inputs: pass a dict with keys {', '.join(names)}")
    return {inputs[0].name: _to_array(model_input, inputs[0], model_name)}


def _to_array(value: Any, meta, model_name: str) -> np.ndarray:
    dtype = ONNX_TO_NUMPY.get(meta.type)
    if dtype is None:
        raise BadRequest(f"model '{model_name}' input '{meta.name}' has unsupported type {meta.type}")
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"model '{model_name}' input '{meta.name}' expects {np.dtype(dtype).name}: {e}") from None
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in meta.shape]
    if arr.ndim == len(shape):
        # Same rank: every fixed dimension must match. Never reshape here: [[a, b], [c, d]] for a [batch, 4]
        # input is a wrong input, not one example of four features.
        if any(d != -1 and d != n for d, n in zip(shape, arr.shape)):
            raise BadRequest(
                f"model '{model_name}' input '{meta.name}' expects shape {list(meta.shape)}, got {list(arr.shape)}"
            )
        return arr
    if shape and shape.count(-1) <= 1 and arr.ndim < len(shape):
        # A lower rank (one example without its batch dimension): reshape when the sizes allow it. Never flatten a
        # higher rank: [[[a, b, c, d]]] for a [batch, 4] input is a wrong input.
        try:
            return arr.reshape(shape)
        except ValueError:
            pass
    raise BadRequest(
        f"model '{model_name}' input '{meta.name}' expects {len(shape)} dimensions {list(meta.shape)}, got shape {list(arr.shape)}"
    )
