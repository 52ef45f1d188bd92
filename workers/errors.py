"""Errors that carry their HTTP answer, so a client or a user's predictor can raise them directly.

They are werkzeug `HTTPException`s, as `flask.abort` raises: the app answers every one of them the same way,
its status with `{"error": description}` and its headers (Retry-After)."""

from __future__ import annotations

import json
import logging

from flask import Response
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ReplicaHTTPError(HTTPException):
    code = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.extra_headers = dict(headers or {})

    def get_headers(self, environ=None, scope=None) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), *self.extra_headers.items()]


class BadRequest(ReplicaHTTPError):
    """Malformed input: a body, a payload that does not fit the model, a bad version string (400)."""

    code = 400


class ModelNotFound(ReplicaHTTPError):
    """An unknown model or version (404). The name follows Cortex, whose users catch it."""

    code = 404


class Unavailable(ReplicaHTTPError):
    """Not ready yet, or the model cache is saturated (503 with Retry-After)."""

    code = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, {"Retry-After": str(retry_after)})


def error_response(status: int, message: str, headers: dict[str, str] | list[tuple[str, str]] | None = None) -> Response:
    """The replica's one error body, `{"error": message}`, which Cortex, TF Serving and V2 clients all read."""
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json", headers=headers or {})


def internal_error(req, logged: str, answered: str) -> Response:
    """A 500 that leaves no secret: the exception (message and traceback, which may hold anything the predictor
    saw) goes to the log under the request's id; the client gets the id to find it there."""
    rid = req.environ.get("replica.request_id") or "-"
    log.exception("%s (request %s)", logged, rid)
    body = {"error": f"{answered}; the replica log has the details under request {rid}", "request_id": rid}
    return Response(json.dumps(body), status=500, mimetype="application/json")
