"""HTTP/1.1 requests parsed once, in the front worker's event loop, by llhttp (Node.js' parser, through
`httptools`, as uvicorn uses it).

The parser is fed whatever a connection's socket gives; each request it completes (head and whole body, chunked
bodies decoded) is queued on the connection as a `Request`, the one parse the WSGI environ is built from.
llhttp frames strictly by RFC 9112 (chunk sizes, trailers, Content-Length with Transfer-Encoding, bare CR or
LF, whitespace before a colon): anything it rejects, and anything over the head and body limits, raises
`BadRequest` with the status to answer; the connection is closed after that answer, so no byte after a
malformed message is ever read as a request.
"""

from __future__ import annotations

from collections import deque

import httptools

# What the event loop answers for each way a request can be refused.
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
           417: "Expectation Failed", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class BadRequest(Exception):
    """A request that cannot be served as sent: answered with `status` and `{"error": message}`, then closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed request: method, target split at "?" (fragment dropped), headers as sent, decoded body."""

    __slots__ = ("method", "target", "path", "query", "headers", "body", "body_size", "version", "keep_alive",
                 "expect_continue", "content_length")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.path = b"/"
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.version = "1.1"
        self.keep_alive = True
        self.expect_continue = False
        self.content_length: int | None = None

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.target.decode('latin-1')} HTTP/{self.version}"


class Limits:
    """The head's bounds (gunicorn's `--limit-request-*` settings) and the body's (`--max-request-size`)."""

    __slots__ = ("request_line", "fields", "field_size", "head", "body")

    def __init__(self, request_line: int, fields: int, field_size: int, body: int):
        self.request_line = request_line or 1 << 20
        self.fields = fields or 1 << 10
        self.field_size = field_size or 1 << 20
        self.head = self.request_line + self.fields * (self.field_size + 2) + 4
        self.body = body


class RequestParser:
    """Feeds one connection's bytes to llhttp; complete requests wait in `ready` until the loop takes them.

    `in_body` and `buffered` tell the loop what this connection holds: a request whose body is still arriving
    (its deadline is the body timeout) and how many body bytes sit in memory (the worker's body budget)."""

    __slots__ = ("_parser", "_limits", "_current", "_head_bytes", "_in_head", "_trailers", "ready", "in_body",
                 "started", "buffered", "continue_wanted")

    def __init__(self, limits: Limits):
        self._parser = httptools.HttpRequestParser(self)
        self._limits = limits
        self._current: Request | None = None
        self._head_bytes = 0
        self._in_head = False
        self._trailers = False
        self.continue_wanted = False  # the request waits for "100 Continue" before it sends its body
        self.ready: deque[Request] = deque()
        self.started = False  # a request's first byte has arrived and it is not complete yet
        self.in_body = False
        self.buffered = 0

    def feed(self, data: bytes) -> None:
        """Parse `data`; raise BadRequest on the first malformed or oversized message (the complete requests
        before it stay in `ready`, to be answered first)."""
        try:
            self._parser.feed_data(data)
        except BadRequest:
            raise
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, BadRequest):
                raise cause from None
            raise BadRequest(400, f"malformed request: {e}") from None
        except httptools.HttpParserInvalidMethodError as e:
            raise BadRequest(400, f"malformed request: {e}") from None
        except httptools.HttpParserUpgrade:
            raise BadRequest(400, "protocol upgrades (Upgrade, CONNECT) are not served") from None
        except httptools.HttpParserError as e:
            raise BadRequest(400, f"malformed request: {e}") from None
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.head:
                raise BadRequest(431, f"request head too large: over {self._limits.head} bytes")

    # -- llhttp's callbacks ------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._current = Request()
        self._in_head, self._head_bytes, self._trailers = True, 0, False
        self.started = True

    def on_url(self, url: bytes) -> None:
        req = self._current
        req.target += url
        if len(req.target) > self._limits.request_line:
            raise BadRequest(414, f"request target too long: over {self._limits.request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers:
            return  # trailer fields are framing only: parsed (and checked) by llhttp, not passed on
        headers = self._current.headers
        if len(name) + len(value) + 2 > self._limits.field_size:
            raise BadRequest(431, f"header field {name[:64].decode('latin-1')!r} too large: over {self._limits.field_size} bytes")
        headers.append((name, value))
        if len(headers) > self._limits.fields:
            raise BadRequest(431, f"too many header fields: over {self._limits.fields}")

    def on_headers_complete(self) -> None:
        req, parser = self._current, self._parser
        self._in_head, self._trailers = False, True
        req.method = parser.get_method().decode("ascii")
        req.version = parser.get_http_version()
        if req.version not in ("1.0", "1.1"):
            raise BadRequest(400, f"HTTP/{req.version} is not served: send HTTP/1.1 or HTTP/1.0")
        req.keep_alive = parser.should_keep_alive()
        _split_target(req)
        for name, value in req.headers:
            lower = name.lower()
            if lower == b"content-length":
                req.content_length = int(value)  # llhttp accepts digits only, and one value
            elif lower == b"expect":
                if value.lower() != b"100-continue":
                    raise BadRequest(417, f"unsupported Expect: {value[:64].decode('latin-1')!r}")
                req.expect_continue = req.version == "1.1"
        if req.content_length is not None and req.content_length > self._limits.body:
            raise BadRequest(413, f"request body of {req.content_length} bytes over the limit of "
                                  f"{self._limits.body} bytes (--max-request-size)")
        self.in_body = True
        self.continue_wanted = req.expect_continue and req.content_length != 0

    def on_body(self, body: bytes) -> None:
        req = self._current
        req.body_size += len(body)
        if req.body_size > self._limits.body:
            raise BadRequest(413, f"request body over the limit of {self._limits.body} bytes (--max-request-size)")
        req.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.ready.append(self._current)
        self._current = None
        self.started = self.in_body = self.continue_wanted = False


def _split_target(req: Request) -> None:
    """Only origin-form targets ("/path?query") are served: absolute-form is meant for proxies and `*` for
    server-wide OPTIONS, and neither may reach a route by another spelling of its path."""
    target = req.target
    if not target.startswith(b"/"):
        raise BadRequest(400, f"request target {target[:64].decode('latin-1')!r} is not a path: send "
                              "\"/path?query\" (origin-form)")
    end = target.find(b"#")
    if end >= 0:
        target = target[:end]
    path, _, query = target.partition(b"?")
    req.path, req.query = path, query
