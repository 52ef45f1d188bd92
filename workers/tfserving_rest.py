"""TensorFlow Serving's REST API for TensorFlow models: `POST /v1/models/NAME[/versions/N]:predict` and
`GET /v1/models/NAME[/versions/N]/metadata`, answered as TensorFlow Serving answers them (its
`g3doc/api_rest.md`), so a client written for it (and Cortex's TensorFlow predictor sat behind it) works here.

`GET /v1/models/NAME` (the model status) stays the replica's own route: it already is TF Serving's format
with extra fields.

- The row format, `{"instances": [...]}`, is a list of instances (values for a one-input signature, objects
  keyed by input name otherwise), stacked into each input's batch; it answers `{"predictions": [...]}`: one
  value per instance for a one-output signature, one object of every output per instance otherwise.
- The columnar format, `{"inputs": ...}` (a value, or an object keyed by input name), answers
  `{"outputs": ...}`: the value, or an object of every output.
- `{"b64": "..."}` is a binary value, in and out: string outputs whose name ends in `_bytes` come back so,
  others as text (or base64 when they are not UTF-8); float32 values are the shortest decimals that read back
  as the same float32.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from workers import encoding, metrics
from workers.errors import BadRequest, internal_error
from workers.payloads import body
from workers.records import Record
from workers.runtime import Runtime
from workers.tensorflow_client import input_array, json_floats

PREDICTIONS = frozenset({"tfserving.predict"})

bp = Blueprint("tfserving", __name__)


def _runtime() -> Runtime:
    return current_app.extensions["replica"]


def _tensorflow_only(runtime: Runtime) -> None:
    kind = runtime.api.predictor.type
    if kind != "tensorflow":
        raise BadRequest(f"TensorFlow Serving's API serves tensorflow predictors; this API's is {kind}: use "
                         "POST /v2/models/NAME/infer (the Open Inference Protocol) or POST /predict")


@bp.route("/v1/models/<name>:predict", methods=["POST"], endpoint="predict")
@bp.route("/v1/models/<name>/versions/<version>:predict", methods=["POST"], endpoint="predict")
def predict(name: str, version: str | None = None) -> Response:
    """Counted as a prediction (metrics by model, version and status), as the Cortex route is."""
    runtime = _runtime()
    counted = metrics.Prediction()
    try:
        _tensorflow_only(runtime)
        runtime.wait_until_loaded()
        doc = _document()
        with runtime.registry.request_scope():
            lv = runtime.registry.get(name, version if version is not None else "latest")
            answer = run(runtime, lv, doc)
        response = Response(encoding.dumps(answer), mimetype="application/json")
        counted.served(lv.name, str(lv.version))
        return response
    except HTTPException as e:
        counted.status = e.code or 500
        raise
    except Exception as e:
        return internal_error(request, f"TF Serving predict of model '{name}' raised {type(e).__name__}",
                              "the model raised an exception")
    finally:
        counted.end(name, runtime.registry.known)


def _document() -> dict:
    raw = body(request)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"malformed JSON body: {e}") from None
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        raise BadRequest('the body must be a JSON object with exactly one of "instances" (row format) or '
                         '"inputs" (columnar format)')
    return doc


def run(runtime: Runtime, lv: Record, doc: dict) -> dict:
    """One predict request on a pinned version: its inputs converted as TF Serving converts them, the
    signature called (batched with others when server_side_batching is on), the answer in the request's
    format."""
    m = lv.model
    signature = doc.get("signature_name")
    if signature not in (None, "", m["signature_key"]):
        raise BadRequest(f"model '{lv.name}' serves signature '{m['signature_key']}' (signature_key in the spec), "
                         f"not '{signature}'")
    inputs = m["inputs"]
    row = "instances" in doc
    values = _row_inputs(lv.name, inputs, doc["instances"]) if row else _columnar_inputs(lv.name, inputs, doc["inputs"])
    feeds = {n: input_array(lv.name, n, inputs[n], values[n]) for n in inputs}
    outputs = runtime.client.run_arrays(lv, feeds)
    if row:
        return {"predictions": _rows(lv.name, outputs)}
    if len(outputs) == 1:
        return {"outputs": _value(*next(iter(outputs.items())))}
    return {"outputs": {k: _value(k, v) for k, v in outputs.items()}}


def _row_inputs(model: str, inputs: dict, instances: Any) -> dict[str, Any]:
    instances = _decoded(instances)
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list, one element per instance')
    if all(isinstance(i, dict) for i in instances):
        missing = sorted({n for i in instances for n in inputs if n not in i})
        if missing:
            raise BadRequest(f"model '{model}': every instance needs input(s) {', '.join(missing)}")
        return {n: [i[n] for i in instances] for n in inputs}
    if len(inputs) != 1:
        raise BadRequest(f"model '{model}' takes inputs {', '.join(inputs)}: each instance must be an object "
                         "keyed by input name")
    return {next(iter(inputs)): instances}


def _columnar_inputs(model: str, inputs: dict, value: Any) -> dict[str, Any]:
    value = _decoded(value)
    if isinstance(value, dict) and not (len(inputs) == 1 and next(iter(inputs)) not in value):
        missing = [n for n in inputs if n not in value]
        if missing:
            raise BadRequest(f"model '{model}' input(s) {', '.join(missing)} missing from \"inputs\"")
        return value
    if len(inputs) != 1:
        raise BadRequest(f"model '{model}' takes inputs {', '.join(inputs)}: \"inputs\" must be an object keyed "
                         "by input name")
    return {next(iter(inputs)): value}


def _decoded(value: Any) -> Any:
    """The JSON value with every `{"b64": "..."}` replaced by its bytes."""
    if isinstance(value, dict):
        if len(value) == 1 and "b64" in value and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except binascii.Error as e:
                raise BadRequest(f"invalid base64 in a {{\"b64\": ...}} value: {e}") from None
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def _rows(model: str, outputs: dict[str, np.ndarray]) -> list:
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        return _value(name, array) if np.ndim(array) else [_value(name, array)]
    sizes = {k: (np.shape(v)[0] if np.ndim(v) else None) for k, v in outputs.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise BadRequest(f"model '{model}': its outputs do not share a batch dimension ({sizes}); use the columnar "
                         'format ("inputs") instead of "instances"')
    n = next(iter(sizes.values()))
    columns = {k: _value(k, v) for k, v in outputs.items()}
    return [{k: column[i] for k, column in columns.items()} for i in range(n)]


def _value(name: str, array: np.ndarray) -> Any:
    """One output tensor as TF Serving writes it in JSON, nested as its shape."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind in "OSU":
        as_b64 = name.endswith("_bytes")
        return np.asarray([_text(v, as_b64) for v in array.reshape(-1).tolist()],
                          dtype=object).reshape(array.shape).tolist()
    if array.dtype == np.float32:
        return np.asarray(json_floats(array.reshape(-1)), dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _text(value: Any, as_b64: bool) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode()
    if not as_b64:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode("ascii")}


@bp.route("/v1/models/<name>/metadata", methods=["GET"])
@bp.route("/v1/models/<name>/versions/<version>/metadata", methods=["GET"])
def metadata(name: str, version: str | None = None) -> Response:
    """GetModelMetadataResponse as TF Serving prints it: every signature of the SavedModel, with its tensors'
    graph names, dtypes and shapes."""
    runtime = _runtime()
    _tensorflow_only(runtime)
    runtime.wait_until_loaded()
    with runtime.registry.request_scope():
        lv = runtime.registry.get(name, version if version is not None else "latest")
        defs = {key: _signature_def(fn) for key, fn in sorted(lv.model["model"].signatures.items())}
        answer = {"model_spec": {"name": lv.name, "signature_name": "", "version": str(lv.version)},
                  "metadata": {"signature_def": {"signature_def": defs}}}
    return Response(encoding.dumps(answer), mimetype="application/json")


def _signature_def(fn: Any) -> dict:
    import tensorflow as tf

    specs_in = fn.structured_input_signature[1]
    specs_out = fn.structured_outputs
    graph_in = [t.name for t in fn.inputs if t.dtype != tf.resource][:len(specs_in)]
    graph_out = [t.name for t in fn.outputs]
    return {
        "inputs": {n: _tensor_info(s, graph_in[i] if i < len(graph_in) else n)
                   for i, (n, s) in enumerate(sorted(specs_in.items()))},
        "outputs": {n: _tensor_info(s, graph_out[i] if i < len(graph_out) else n)
                    for i, (n, s) in enumerate(sorted(specs_out.items()))},
        "method_name": "tensorflow/serving/predict",
    }


def _tensor_info(spec: Any, graph_name: str) -> dict:
    from tensorflow.core.framework import types_pb2

    shape = spec.shape
    if shape.rank is None:
        tensor_shape: dict = {"dim": [], "unknown_rank": True}
    else:
        tensor_shape = {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in shape.as_list()],
                        "unknown_rank": False}
    return {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum), "tensor_shape": tensor_shape,
            "name": graph_name}
