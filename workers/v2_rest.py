"""The Open Inference Protocol (KServe V2) REST routes, on the replica's own port, over `workers.inference`.

Health (`/v2/health/live`, `/v2/health/ready`: 200 when true, 400 with the reason when not, as the protocol
asks of a 4xx), server and model metadata, model readiness, inference, and Triton's model repository
extension (`/v2/repository/index`, `.../models/NAME/load` and `/unload`).

An inference body is JSON, or, with Triton's binary tensor extension (what `tritonclient.http` sends by
default), a JSON header of `Inference-Header-Content-Length` bytes followed by the raw bytes of each input
whose `parameters.binary_data_size` says so, in input order. Outputs come back as JSON `data`, or as raw bytes
after the JSON header for those requested with `binary_data` (or all, with the request's
`binary_data_output`). Errors are `{"error": message}` with the status of the replica's errors.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any, Callable

import numpy as np
from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from workers import encoding, metrics, tensors
from workers.errors import BadRequest, error_response, http_error_parts, internal_error_body
from workers.inference import InferResult, Inference
from workers.payloads import body

INFER_HEADER = "Inference-Header-Content-Length"
PREDICTIONS = frozenset({"v2.infer"})  # the endpoints that run a model: shed and counted as predictions

bp = Blueprint("v2", __name__, url_prefix="/v2")


def _inference() -> Inference:
    return current_app.extensions["replica.v2"]


def _json(doc: Any, status: int = 200) -> Response:
    return Response(encoding.dumps(doc), status=status, mimetype="application/json")


# -- health and metadata -----------------------------------------------------------------------------------------
@bp.route("", methods=["GET"])
def server_metadata() -> Response:
    return _json(_inference().server_metadata())


@bp.route("/health/live", methods=["GET"])
def live() -> Response:
    v2 = _inference()
    if not v2.server_live():
        return error_response(400, v2.runtime.supervisor_alive()[1])
    return _json({"live": True})


@bp.route("/health/ready", methods=["GET"])
def ready() -> Response:
    v2 = _inference()
    if not v2.server_ready():
        why = v2.runtime.not_ready_reason() or v2.runtime.supervisor_alive()[1]
        if why == "ok":
            why = "this worker is still loading the models on disk"
        return error_response(400, why)
    return _json({"ready": True})


@bp.route("/models/<name>", methods=["GET"])
@bp.route("/models/<name>/versions/<version>", methods=["GET"])
def model_metadata(name: str, version: str | None = None) -> Response:
    info = _inference().metadata(name, version)
    return _json({"name": info.name, "versions": info.versions, "platform": info.platform,
                  "inputs": [vars(t) for t in info.inputs], "outputs": [vars(t) for t in info.outputs]})


@bp.route("/models/<name>/ready", methods=["GET"])
@bp.route("/models/<name>/versions/<version>/ready", methods=["GET"])
def model_ready(name: str, version: str | None = None) -> Response:
    if not _inference().model_ready(name, version):
        return error_response(400, f"model '{name}'{f' version {version}' if version else ''} is not ready")
    return _json({"name": name, "ready": True})


# -- inference ---------------------------------------------------------------------------------------------------
# The one route that runs a model is served beneath Flask (`InferRoute`), straight from the WSGI environ: a
# request context, routing and a Response object would cost more than the whole exchange does. The Flask view
# answers the same way for what reaches it (the same path spelled differently).
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
JSON_TYPE = [("Content-Type", "application/json")]


@bp.route("/models/<name>/infer", methods=["POST"], endpoint="infer")
@bp.route("/models/<name>/versions/<version>/infer", methods=["POST"], endpoint="infer")
def infer(name: str, version: str | None = None) -> Response:
    status, headers, payload = exchange(_inference(), request.environ, name, version, current_app.config["MAX_CONTENT_LENGTH"])
    return Response(payload, status=status, headers=headers)


class InferRoute:
    """WSGI middleware in front of the Flask app: `POST /v2/models/NAME[/versions/V]/infer` answered by
    `exchange`, everything else passed on."""

    def __init__(self, app: Any, v2: Inference, max_request_size: int | None):
        self.app, self.v2, self.max_request_size = app, v2, max_request_size

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if environ.get("REQUEST_METHOD") == "POST":
            m = INFER_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if m is not None:
                status, headers, payload = exchange(self.v2, environ, m.group(1), m.group(2), self.max_request_size)
                start_response(f"{status} {HTTPStatus(status).phrase}", headers)
                return [payload]
        return self.app(environ, start_response)


def exchange(v2: Inference, environ: dict, name: str, version: str | None,
             max_request_size: int | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """One inference, whatever its outcome, as (status, headers, body), counted as a prediction (metrics by
    model, version and status) as the Cortex route is; errors are the replica's `{"error": ...}` bodies."""
    counted = metrics.Prediction()
    try:
        doc, inputs = read_infer_request(_body(environ, max_request_size),
                                         environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"))
        requested = _requested_outputs(doc)
        headers = dict(EnvironHeaders(environ)) if "headers" in v2.runtime.wanted_args else {}
        result = v2.infer(name, version, inputs, list(requested) or None, headers)
        answer = infer_response(result, doc, requested)
        counted.served(result.model_name, result.model_version)
        return answer
    except HTTPException as e:
        counted.status, payload, extra = http_error_parts(e)
        return counted.status, JSON_TYPE + extra, payload.encode()
    except Exception as e:
        payload = internal_error_body(environ, f"V2 inference of model '{name}' raised {type(e).__name__}",
                                      "the model raised an exception")
        return 500, JSON_TYPE, payload.encode()
    finally:
        counted.end(name, v2.registry.known)


def _body(environ: dict, limit: int | None) -> bytes:
    """The request body: the front hands every body whole, with its length (a chunked one decoded)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("Content-Length is not a number") from None
    if limit is not None and length > limit:
        raise RequestEntityTooLarge(f"request body over the limit of {limit} bytes (--max-request-size)")
    return environ["wsgi.input"].read(length) if length else b""


def read_infer_request(raw: bytes, header: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """The request's JSON document and its input tensors by name (JSON `data`, or with the binary extension's
    `header` (Inference-Header-Content-Length), the bytes after the JSON header)."""
    binary = memoryview(b"")
    if header is not None:
        if not header.isascii() or not header.isdigit() or int(header) > len(raw):
            raise BadRequest(f"{INFER_HEADER} must be the JSON header's size in bytes, at most the body's "
                             f"{len(raw)}; got {header!r}")
        binary = memoryview(raw)[int(header):]
        raw = raw[:int(header)]
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"malformed JSON in the inference request: {e}") from None
    except RecursionError:
        raise BadRequest("malformed JSON in the inference request: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest('an inference request is a JSON object with a non-empty "inputs" list')
    inputs: dict[str, np.ndarray] = {}
    at = 0
    for i, tensor in enumerate(doc["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest(f"inputs[{i}] must be an object with a name, datatype, shape and data")
        name = tensor["name"]
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        for key in ("datatype", "shape"):
            if key not in tensor:
                raise BadRequest(f"input '{name}' has no {key}")
        params = tensor.get("parameters")
        size = _parameters(tensor, f"input '{name}'").get("binary_data_size") if params else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or at + size > len(binary):
                raise BadRequest(f"input '{name}': binary_data_size {size!r} is past the {len(binary)} bytes "
                                 "of binary data after the JSON header")
            inputs[name] = tensors.from_raw(tensor["datatype"], tensor["shape"], binary[at:at + size], name)
            at += size
        else:
            inputs[name] = tensors.from_json(tensor["datatype"], tensor["shape"], tensor.get("data"), name)
    if at != len(binary):
        raise BadRequest(f"{len(binary) - at} bytes of binary data after the JSON header belong to no input "
                         "(each binary input needs parameters.binary_data_size)")
    return doc, inputs


def _parameters(obj: dict, what: str) -> dict:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"{what}: parameters must be an object")
    return params


def _requested_outputs(doc: dict) -> dict[str, dict]:
    """{output name: its parameters}, in the order requested (empty: every output)."""
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadRequest('"outputs" must be a list of {"name": ...} objects')
    out: dict[str, dict] = {}
    for o in outputs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest('each requested output must be an object with a "name"')
        params = _parameters(o, f"output '{o['name']}'")
        if params.get("classification"):
            raise BadRequest(f"output '{o['name']}': the classification extension is not supported; request "
                             "the scores and rank them in the client")
        out[o["name"]] = params
    return out


def infer_response(result: InferResult, doc: dict, requested: dict[str, dict]) -> tuple[int, list[tuple[str, str]], bytes]:
    """The inference response: JSON, or the JSON header and then the outputs requested as binary data."""
    binary_default = bool(_parameters(doc, "the request").get("binary_data_output", False))
    outputs, blobs = [], []
    for name, array in result.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": tensors.datatype_of(array.dtype), "shape": list(array.shape)}
        wanted = requested.get(name)
        if wanted.get("binary_data", binary_default) if wanted else binary_default:
            raw = tensors.to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = tensors.to_json(array)
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if isinstance(doc.get("id"), str):
        answer["id"] = doc["id"]
    answer["outputs"] = outputs
    head = encoding.dumps(answer).encode()
    if not blobs:
        return 200, JSON_TYPE, head
    return 200, [("Content-Type", "application/octet-stream"), (INFER_HEADER, str(len(head)))], b"".join([head, *blobs])


# -- the model repository extension ----------------------------------------------------------------------------
def _optional_json() -> dict:
    raw = body(request)
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"malformed JSON body: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


@bp.route("/repository/index", methods=["POST"])
def repository_index() -> Response:
    return _json(_inference().index(bool(_optional_json().get("ready", False))))


@bp.route("/repository/models/<name>/load", methods=["POST"])
def repository_load(name: str) -> Response:
    _optional_json()
    _inference().load(name)
    return _json({})


@bp.route("/repository/models/<name>/unload", methods=["POST"])
def repository_unload(name: str) -> Response:
    _optional_json()
    _inference().unload(name)
    return _json({})
