"""The client a TensorFlowPredictor receives: SavedModels run in-process, loaded after fork.

`predict` takes and returns what Cortex's client did in front of TensorFlow Serving (Cortex v0.22,
`lib/model/tfs.py`), so a Cortex predictor works unchanged:

- each input value is converted to the signature's dtype with the rules of `make_tensor_proto` (which Cortex
  called): numbers for numeric inputs, no implicit parsing of strings, no silent float-to-int truncation of
  Python values, numpy arrays cast. TF Serving fed the result without checking it against the signature's
  shape, so a scalar for a `[None]` input worked; here a value of lower rank than its input is fed as a batch
  of one (leading dimensions of size 1 are added), and any other shape mismatch is a 400 naming the input and
  the shape it expects.
- each output comes back as Cortex returned it: `json_format.MessageToDict` of TF Serving's response, then the
  value list of the output's dtype. That is a flat list, its shape dropped, with the protobuf JSON mapping's
  types (see `cortex_outputs`).

`predict_arrays` is the explicit opt-in for shaped numpy outputs.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from workers.batching import Batcher, run_stacked, stack_key, stackable
from workers.errors import BadRequest
from workers.records import Record
from workers.registry import ModelRegistry


def tensorflow_loader(signature_keys: dict[str, str | None], default_key: str | None):
    """Load a SavedModel and pick its signature: the configured key, else the only one, else serving_default/predict."""

    def load(model_path: str, name: str, version: int) -> dict:
        import tensorflow as tf

        loaded = tf.saved_model.load(model_path)
        available = sorted(loaded.signatures.keys())
        key = signature_keys.get(name, default_key)
        if key is None:
            if len(available) == 1:
                key = available[0]
            else:
                key = next((k for k in ("serving_default", "predict") if k in available), None)
        if key is None or key not in available:
            raise ValueError(
                f"signature {key!r} not found in the SavedModel; available: {', '.join(available) or 'none'}"
                + ("" if key else "; set signature_key in the spec")
            )
        fn = loaded.signatures[key]
        inputs = fn.structured_input_signature[1]
        return {"model": loaded, "signature_key": key, "function": fn, "inputs": inputs,
                "outputs": dict(sorted(fn.structured_outputs.items())),
                "input_signatures": {n: {"shape": spec.shape.as_list() if spec.shape.rank is not None else None,
                                         "type": spec.dtype.name} for n, spec in inputs.items()}}

    return load


class TensorFlowClient:
    def __init__(self, registry: ModelRegistry, batcher: Batcher | None = None):
        self._registry = registry
        self._batcher = batcher  # server_side_batching: concurrent predict calls share one signature call

    def get_model(self, model_name: str | None = None, model_version: Any = "latest") -> dict:
        return self._registry.get(model_name, model_version).model

    def predict(self, model_input: Any, model_name: str | None = None, model_version: Any = "latest") -> dict:
        """Run the model's signature; returns {output name: flat list of values}, as Cortex's client did."""
        return cortex_outputs(self.predict_arrays(model_input, model_name, model_version))

    def predict_arrays(self, model_input: Any, model_name: str | None = None,
                       model_version: Any = "latest") -> dict[str, np.ndarray]:
        """Run the model's signature; returns {output name: numpy array}, shapes and dtypes kept.

        Not part of Cortex's client: an opt-in for predictors written for this replica."""
        lv = self._registry.get(model_name, model_version)
        m = lv.model
        inputs = m["inputs"]
        if not isinstance(model_input, dict):
            if len(inputs) != 1:
                raise BadRequest(f"model '{lv.name}' takes inputs {', '.join(inputs)}: pass a dict keyed by input name")
            model_input = {next(iter(inputs)): model_input}
        missing = [n for n in inputs if n not in model_input]
        if missing:
            raise BadRequest(f"model '{lv.name}' input is missing key(s) {', '.join(missing)} (expected: {', '.join(inputs)})")
        feeds = {n: input_array(lv.name, n, spec, model_input[n]) for n, spec in inputs.items()}
        return self.run_arrays(lv, feeds)  # a bad input is a 400 above, before any batch

    def run_arrays(self, lv: Record, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a pinned version's signature on inputs already converted; {output name: array}, batched with
        other requests when server_side_batching is on. The V2 and TF Serving routes call this directly."""
        m = lv.model
        if self._batcher is not None and stackable(feeds, _batch_dims(m["inputs"])):
            key = (lv.name, lv.version, lv, m["signature_key"], stack_key(feeds))
            return self._batcher.submit(key, feeds, lambda items: run_stacked(items, lambda f: _call(lv, f)))
        return _call(lv, feeds)


def _call(lv: Record, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One call of the signature; its outputs as numpy arrays."""
    import tensorflow as tf

    inputs = lv.model["inputs"]
    try:
        out = lv.model["function"](**{n: tf.constant(a, dtype=inputs[n].dtype) for n, a in feeds.items()})
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
        raise BadRequest(f"model '{lv.name}' rejected the input: {e}") from e
    return {k: v.numpy() for k, v in out.items()}


def _batch_dims(inputs: dict) -> dict[str, bool]:
    """Per input, whether the signature leaves its first dimension open (None): a batch dimension."""
    return {n: bool(spec.shape.rank) and spec.shape[0] is None for n, spec in inputs.items()}


def input_array(model: str, name: str, spec: Any, value: Any) -> np.ndarray:
    """One input as an array of the signature's dtype, in a shape the signature accepts (TF Serving's and
    Cortex's conversion of JSON values)."""
    import tensorflow as tf

    try:
        # tf.constant accepts and refuses exactly what make_tensor_proto(value, dtype) did: ints for a float
        # input, but no "1.5" for a float or 1.5 for an int; numpy arrays are cast.
        array = tf.constant(value, dtype=spec.dtype).numpy()
    except (TypeError, ValueError) as e:
        raise BadRequest(f"model '{model}' input '{name}' expects {spec.dtype.name}"
                         f"{_shape_text(spec.shape)}: {e}") from None
    if not isinstance(array, np.ndarray):  # a scalar: numpy's scalar, or bytes for a string
        array = np.array(array, dtype=object if spec.dtype == tf.string else None)
    shape = spec.shape
    if shape.is_compatible_with(array.shape):
        return array
    if shape.rank is not None and array.ndim < shape.rank:
        batched = (1,) * (shape.rank - array.ndim) + array.shape
        if shape.is_compatible_with(batched):
            return array.reshape(batched)
    raise BadRequest(f"model '{model}' input '{name}' expects shape {shape.as_list()}, got {list(array.shape)}")


def _shape_text(shape: Any) -> str:
    return "" if shape.rank is None else f" of shape {shape.as_list()}"


# -- outputs as Cortex returned them --------------------------------------------------------------------------

_NON_FINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def cortex_outputs(outputs: dict[str, np.ndarray]) -> dict[str, list]:
    """Each output as Cortex's client returned it: a flat list of values, as TF Serving put them in the
    tensor's typed value field and `json_format.MessageToDict` turned that into JSON types."""
    return {name: cortex_values(np.asarray(value)) for name, value in outputs.items()}


def cortex_values(array: np.ndarray) -> list:
    """The protobuf JSON mapping of one tensor's value field (`float_val`, `int64_val`, ...), flattened.

    int64 and uint64 values are decimal strings and DT_STRING values base64 strings (the JSON mapping of
    64-bit integers and bytes); float32 values are the shortest decimals that read back as the same float32;
    NaN and infinities are the strings "NaN", "Infinity", "-Infinity"; float16 and bfloat16 are their bit
    patterns, as `half_val` holds them; complex numbers are (real, imaginary) pairs, flattened."""
    flat = array.reshape(-1)
    kind, name = flat.dtype.kind, flat.dtype.name
    if kind in "OS":  # DT_STRING: TensorFlow hands out bytes objects
        return [base64.b64encode(v).decode("ascii") for v in flat.tolist()]
    if kind == "U":
        return [base64.b64encode(v.encode()).decode("ascii") for v in flat.tolist()]
    if kind == "b":
        return flat.tolist()
    if kind in "iu":
        if flat.dtype.itemsize == 8:
            return flat.astype(str).tolist()
        return flat.tolist()
    if name in ("float16", "bfloat16"):
        return flat.view(np.uint16).tolist()
    if kind == "c":
        parts = flat.view(np.float32 if flat.dtype.itemsize == 8 else np.float64)
        return json_floats(parts)
    if kind == "f":
        return json_floats(flat)
    raise TypeError(f"outputs of dtype {flat.dtype} have no value field in TF Serving's response")


def json_floats(flat: np.ndarray) -> list:
    """Flat float values as the protobuf JSON mapping (and TF Serving) writes them."""
    if flat.dtype == np.float32:
        # numpy's str() of a float32 is its shortest round-trip decimal, which is what protobuf's JSON mapping
        # gives (ToShortestFloat), except for subnormals, where protobuf starts from 6 significant digits.
        values = flat.astype(str).astype(np.float64).tolist()
        tiny = np.flatnonzero((flat != 0) & (np.abs(flat) < _FLOAT32_TINY))
        for i in tiny.tolist():
            values[i] = _shortest_float32(float(flat[i]))
    else:
        values = flat.tolist()
    if not np.isfinite(flat).all():
        values = [_json_float(v) for v in values]
    return values


def _json_float(value: float) -> float | str:
    if value != value:
        return "NaN"
    return _NON_FINITE.get(value, value)


def _shortest_float32(value: float) -> float:
    """protobuf's ToShortestFloat: the fewest significant digits, from 6 up, that read back as this float32."""
    target = np.float32(value)
    for precision in range(6, 10):
        rounded = float(f"{value:.{precision}g}")
        if np.float32(rounded) == target:
            return rounded
    return float(target)
