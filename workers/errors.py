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
    return Response(error_body(message), status=status, mimetype="application/json", headers=headers or {})


def error_body(message: str) -> str:
    return json.dumps({"error": message})


def http_error_parts(e: HTTPException) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, body, headers) of any HTTP error, the replica's own or werkzeug's: its status with
    `{"error": description}` and its own headers (Retry-After), less werkzeug's HTML content type."""
    headers = [(k, v) for k, v in e.get_headers() if k.lower() != "content-type"]
    return e.code or 500, error_body(e.description or e.name), headers


def internal_error_body(environ: dict, logged: str, answered: str) -> str:
    """A 500's body that leaves no secret: the exception (message and traceback, which may hold anything the
    predictor saw) goes to the log under the request's id; the client gets the id to find it there."""
    rid = environ.get("replica.request_id") or "-"
    log.exception("%s (request %s)", logged, rid)
    return json.dumps({"error": f"{answered}; the replica log has the details under request {rid}", "request_id": rid})


def internal_error(req, logged: str, answered: str) -> Response:
    """`internal_error_body` as a response (call it in an `except` block)."""
    return Response(internal_error_body(req.environ, logged, answered), status=500, mimetype="application/json")
