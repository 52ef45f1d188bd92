"""The Open Inference Protocol's gRPC service (workers/protos/inference.proto) over a worker's Runtime.

Only the protocol lives here: messages in and out, and the replica's errors (workers.errors, HTTP statuses)
as gRPC status codes with the error's message as details. The generated modules are imported here and nowhere
else, and only in a worker that serves gRPC (workers/grpc_server.py): tritonclient's own generated module
defines the same message names, and protobuf refuses a second definition of a name in one process.
"""

from __future__ import annotations

import functools
import logging
import os
from importlib.metadata import PackageNotFoundError, version

import grpc
from werkzeug.exceptions import HTTPException

from workers.http_exchange import plain_request_id
from workers.protos import inference_pb2 as pb
from workers.protos import inference_pb2_grpc as pb_grpc
from workers.runtime import Runtime

log = logging.getLogger(__name__)

SERVER_NAME = "model-replica"
EXTENSIONS = ("model_repository",)

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
    trailing metadata), anything else with INTERNAL and the call's id, the exception in the log under it."""

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
            code, details = grpc.StatusCode.INTERNAL, f"internal error; the replica log has the details under request {rid}"
        context.abort(code, details)

    return rpc


def _server_version() -> str:
    try:
        return version("model-replica")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over one worker's Runtime."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    @_answered
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.runtime.supervisor_alive()[0])

    @_answered
    def ServerReady(self, request, context):
        ready = self.runtime.registry.initial_sync_done.is_set() and self.runtime.supervisor_alive()[0]
        return pb.ServerReadyResponse(ready=ready)

    @_answered
    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=_server_version(), extensions=EXTENSIONS)


def add_to_server(runtime: Runtime, server: grpc.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(runtime), server)
