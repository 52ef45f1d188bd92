"""A raw WSGI callable, no framework: what a Rust HTTP server (granian) gives Python code at the least cost.

    BENCH_ONNX_MODEL=model.onnx granian --interface wsgi --workers 2 wsgi_app:app

POST / with the sample JSON answers the label; GET /readyz creates the session and answers 200.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import iris

TEXT = [("Content-Type", "text/plain")]


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            body = iris.predict(environ["wsgi.input"].read(length))
        except (ValueError, KeyError, TypeError) as e:
            start_response("400 Bad Request", TEXT)
            return [str(e).encode()]
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
        return [body]
    if environ["PATH_INFO"] == "/readyz":
        iris.session()
        start_response("200 OK", [*TEXT, ("Content-Length", "5")])
        return [b"ready"]
    start_response("404 Not Found", [*TEXT, ("Content-Length", "0")])
    return [b""]
