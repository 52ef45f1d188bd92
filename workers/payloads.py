"""Request bodies and responses as Cortex defines them: JSON, text, forms or bytes in; JSON, text or bytes out."""

from __future__ import annotations

import json
from typing import Any

from flask import Request, Response
from werkzeug.exceptions import RequestEntityTooLarge

from workers import encoding
from workers.errors import BadRequest


def body(req: Request) -> bytes:
    """The request body, at most --max-request-size bytes (413 over it).

    With a Content-Length (the usual case) the body is read straight from the server's input stream: werkzeug's
    own stream wrapping costs a few µs on every request. A streamed (chunked) body has no length to check up
    front, and werkzeug stops reading it at the limit without an error: one byte more means it was over the
    limit (413), never a body silently cut short."""
    limit = req.max_content_length
    length = req.content_length
    if length is not None:
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        return req.environ["wsgi.input"].read(length) if length else b""
    raw = req.get_data(cache=False)
    if limit is not None and len(raw) >= limit and req.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def parse_payload(req: Request) -> Any:
    """Cortex's body rules: JSON -> object, text/plain -> str, forms -> form data, anything else -> bytes."""
    ctype = req.environ.get("CONTENT_TYPE")
    if ctype != "application/json":  # the common case skips parsing the header's options
        ctype = (req.mimetype or "").lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = body(req)
        if not raw:
            raise BadRequest("empty body: send a JSON document")
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise BadRequest(f"malformed JSON body: {e}") from None
        except RecursionError:
            raise BadRequest("malformed JSON body: nested too deeply") from None
    if ctype == "text/plain":
        charset = req.mimetype_params.get("charset", "utf-8")
        try:
            return body(req).decode(charset)
        except (UnicodeDecodeError, LookupError) as e:
            raise BadRequest(f"text body is not valid {charset}: {e}") from None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return req.form
    return body(req)


def to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return Response(result, mimetype="text/plain")
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), mimetype="application/octet-stream")
    return Response(encoding.dumps(result), mimetype="application/json")
