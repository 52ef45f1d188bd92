"""The Open Inference Protocol's gRPC service (workers/protos/inference.proto) over `workers.inference`.

Only the protocol lives here: messages to tensors and back (workers/tensors.py), and the replica's errors
(workers.errors, HTTP statuses) as gRPC status codes with the error's message as details; what each call does
is the protocol-independent layer's, as for the REST routes (workers/v2_rest.py). A request's inputs come as
`raw_input_contents` (one entry per input, in input order) or as each input's typed `contents`; the outputs go
back the same way (raw when the inputs were, as Triton answers), only those requested when `outputs` names
some, with the request's `id`.

The generated modules are imported here and nowhere else, and only in a worker that serves gRPC
(workers/grpc_server.py): tritonclient's own generated module defines the same message names, and protobuf
refuses a second definition of a name in one process.
"""

from __future__ import annotations

import functools
import logging
import os

import grpc
import numpy as np
from werkzeug.exceptions import HTTPException

from workers import metrics, tensors
from workers.errors import BadRequest
from workers.http_exchange import plain_request_id
from workers.inference import InferResult, Inference
from workers.protos import inference_pb2 as pb
from workers.protos import inference_pb2_grpc as pb_grpc
from workers.runtime import Runtime

log = logging.getLogger(__name__)

# The replica's HTTP statuses as gRPC codes (the inverse of gRPC's own HTTP mapping where one exists).
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code of one of the replica's HTTP statuses: any other client error is FAILED_PRECONDITION,
    any other status INTERNAL."""
    code = _CODES.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.FAILED_PRECONDITION if 400 <= http_status < 500 else grpc.StatusCode.INTERNAL


def request_id(context: grpc.ServicerContext) -> str:
    """The call's id, as an HTTP request's: the client's `x-request-id` metadata when it is a plain token, else
    a fresh one. An INTERNAL error names it; the log has the details under it."""
    for key, value in context.invocation_metadata():
        if key == "x-request-id" and value.isascii() and plain_request_id(value.encode()):
            return value
    return os.urandom(8).hex()


def _answered(method):
    """Run an RPC; a replica error ends it with its status code and message (503 with Retry-After in the
    trailing metadata), anything else with INTERNAL and the call's id, the exception in the log under it:
    no text of the predictor or the model reaches the client."""

    @functools.wraps(method)
    def rpc(self, request, context):
        try:
            return method(self, request, context)
        except HTTPException as e:
            status = e.code or 500
            retry = getattr(e, "extra_headers", {}).get("Retry-After")
            if retry:
                context.set_trailing_metadata((("retry-after", retry),))
            code, details = status_code(status), e.description or e.name
        except Exception as e:
            rid = request_id(context)
            log.exception("%s raised %s (request %s)", method.__name__, type(e).__name__, rid)
            code = grpc.StatusCode.INTERNAL
            details = f"{method.__name__} failed; the replica log has the details under request {rid}"
        context.abort(code, details)

    return rpc


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over one worker's `Inference`."""

    def __init__(self, runtime: Runtime):
        self.v2 = Inference(runtime)

    # -- health and metadata -------------------------------------------------------------------------------------
    @_answered
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.v2.server_live())

    @_answered
    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.v2.server_ready())

    @_answered
    def ServerMetadata(self, request, context):
        meta = self.v2.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    @_answered
    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.v2.model_ready(request.name, request.version or None))

    @_answered
    def ModelMetadata(self, request, context):
        info = self.v2.metadata(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=info.name, versions=info.versions, platform=info.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in info.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in info.outputs])

    # -- inference -----------------------------------------------------------------------------------------------
    @_answered
    def ModelInfer(self, request, context):
        """Counted as a prediction (metrics by model, version and HTTP-equivalent status), as HTTP's are; the
        version is pinned for the call by `Inference.infer`'s own request scope."""
        counted = metrics.Prediction()
        try:
            result = self.v2.infer(request.model_name, request.model_version or None, infer_inputs(request),
                                   [o.name for o in request.outputs] or None, self._headers(context))
            response = infer_response(result, request.id, raw=bool(request.raw_input_contents))
            counted.served(result.model_name, result.model_version)
            return response
        except HTTPException as e:
            counted.status = e.code or 500
            raise
        finally:
            counted.end(request.model_name, self.v2.registry.known)

    def _headers(self, context: grpc.ServicerContext) -> dict[str, str]:
        """The call's metadata, for a Python predictor whose `predict` declares `headers` (binary `-bin`
        entries left out)."""
        if "headers" not in self.v2.runtime.wanted_args:
            return {}
        return {k: v for k, v in context.invocation_metadata() if not k.endswith("-bin")}

    # -- the model repository extension --------------------------------------------------------------------------
    @_answered
    def RepositoryIndex(self, request, context):
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[entry(**m) for m in self.v2.index(request.ready)])

    @_answered
    def RepositoryModelLoad(self, request, context):
        self.v2.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_answered
    def RepositoryModelUnload(self, request, context):
        self.v2.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def infer_inputs(request) -> dict[str, np.ndarray]:
    """The request's tensors by name, from `raw_input_contents` or from each input's `contents`."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send one "
                         "per input, in input order")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input '{name}' has contents as well as raw_input_contents: send one or the other")
            inputs[name] = tensors.from_raw(tensor.datatype, list(tensor.shape), raw[i], name)
            continue
        field = tensors.CONTENTS_FIELD.get(tensor.datatype)
        if field is None and tensor.datatype in tensors.V2_TO_NUMPY:
            raise BadRequest(f"input '{name}': {tensor.datatype} has no contents field; send it in raw_input_contents")
        values = getattr(tensor.contents, field) if field else []  # an unknown datatype: from_contents says so
        inputs[name] = tensors.from_contents(tensor.datatype, list(tensor.shape), values, name)
    return inputs


def infer_response(result: InferResult, request_id: str, raw: bool) -> pb.ModelInferResponse:
    """The outputs as `raw_output_contents` (`raw`) or as each output's typed contents."""
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version, id=request_id)
    for name, array in result.outputs.items():
        output = response.outputs.add(name=name, datatype=tensors.datatype_of(array.dtype), shape=array.shape)
        if raw:
            response.raw_output_contents.append(tensors.to_raw(array))
        else:
            field, values = tensors.to_contents(array)
            getattr(output.contents, field).extend(values)
    return response


def add_to_server(runtime: Runtime, server: grpc.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(runtime), server)
