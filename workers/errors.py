"""Errors that carry their HTTP answer, so a client or a user's predictor can raise them directly.

They are werkzeug `HTTPException`s, as `flask.abort` raises: the app answers every one of them the same way,
its status with `{"error": description}` and its headers (Retry-After)."""

from __future__ import annotations

from werkzeug.exceptions import HTTPException


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
