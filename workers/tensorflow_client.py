"""The client a TensorFlowPredictor receives: SavedModels run in-process, loaded after fork."""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.batching import Batcher, run_stacked, stack_key, stackable
from workers.errors import BadRequest
from workers.registry import LoadedVersion, ModelRegistry


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
                "input_signatures": {n: {"shape": spec.shape.as_list(), "type": spec.dtype.name} for n, spec in inputs.items()}}

    return load


class TensorFlowClient:
    def __init__(self, registry: ModelRegistry, batcher: Batcher | None = None):
        self._registry = registry
        self._batcher = batcher  # server_side_batching: concurrent predict calls share one signature call

    def get_model(self, model_name: str | None = None, model_version: Any = "latest") -> dict:
        return self._registry.get(model_name, model_version).model

    def predict(self, model_input: Any, model_name: str | None = None, model_version: Any = "latest") -> dict:
        """Run the model's signature; returns {output name: numpy array}, shapes kept."""
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
        feeds = {}
        for n, spec in inputs.items():
            try:
                arr = np.asarray(model_input[n], dtype=spec.dtype.as_numpy_dtype)
            except (ValueError, TypeError) as e:
                raise BadRequest(f"model '{lv.name}' input '{n}' expects {spec.dtype.name}: {e}") from None
            if not spec.shape.is_compatible_with(arr.shape):
                raise BadRequest(f"model '{lv.name}' input '{n}' expects shape {spec.shape.as_list()}, got {list(arr.shape)}")
            feeds[n] = arr
        # A bad input is a 400 above, before any batch.
        if self._batcher is not None and stackable(feeds, _batch_dims(inputs)):
            key = (lv.name, lv.version, lv, m["signature_key"], stack_key(feeds))
            out = self._batcher.submit(key, feeds, lambda items: run_stacked(items, lambda f: _call(lv, f)))
        else:
            out = _call(lv, feeds)
        return to_output(out)


def _call(lv: LoadedVersion, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One call of the signature; its outputs as numpy arrays."""
    import tensorflow as tf

    try:
        out = lv.model["function"](**{n: tf.constant(a) for n, a in feeds.items()})
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
        raise BadRequest(f"model '{lv.name}' rejected the input: {e}") from e
    return {k: v.numpy() for k, v in out.items()}


def to_output(arrays: dict[str, np.ndarray]) -> dict:
    """What `predict` returns for one caller's rows, batched or not: {output name: numpy array}, shapes kept."""
    return arrays


def _batch_dims(inputs: dict) -> dict[str, bool]:
    """Per input, whether the signature leaves its first dimension open (None): a batch dimension."""
    return {n: bool(spec.shape.rank) and spec.shape[0] is None for n, spec in inputs.items()}
