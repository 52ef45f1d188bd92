"""Errors that carry their HTTP answer, so a client or a user's predictor can raise them directly."""

from __future__ import annotations


class ReplicaHTTPError(Exception):
    status = 500
    headers: dict[str, str] = {}

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if headers:
            self.headers = headers


class BadRequest(ReplicaHTTPError):
    """Malformed input: a body, a payload that does not fit the model, a bad version string (400)."""

    status = 400


class ModelNotFound(ReplicaHTTPError):
    """An unknown model or version (404). The name follows Cortex, whose users catch it."""

    status = 404


class Unavailable(ReplicaHTTPError):
    """Not ready yet, or the model cache is saturated (503 with Retry-After)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, {"Retry-After": str(retry_after)})
