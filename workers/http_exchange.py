"""One request through the WSGI app: the environ built from the loop's single parse (`workers.http_parse`), and
the answer serialized whole and sent in one write.

A response leaves in one send (in pieces of at most `SEND_LIMIT` bytes only when it is larger), so a worker
killed mid-answer has sent all of it or nothing: a load balancer retries the second (HAProxy's `retry-on
empty-response`), never a head whose body never comes.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sys
from urllib.parse import unquote_to_bytes

from workers.http_parse import REASONS, Request

SEND_LIMIT = 256 * 1024
_TOKEN = re.compile(rb"[A-Za-z0-9._:-]+")
NO_BODY_STATUSES = (204, 304)


class Exchange:
    """What one request's answer came to: its status, body size, and whether the connection stays open."""

    __slots__ = ("status", "sent", "keep_alive", "request_id")

    def __init__(self, status: int = 500, sent: int = 0, keep_alive: bool = False, request_id: str = ""):
        self.status, self.sent, self.keep_alive, self.request_id = status, sent, keep_alive, request_id


class ServerInfo:
    """The parts of the environ that are the same for every request on a listener."""

    __slots__ = ("base", "name", "port")

    def __init__(self, sockname, multiprocess: bool):
        host, port = (sockname[0], sockname[1]) if isinstance(sockname, tuple) else (str(sockname), "")
        self.name, self.port = host, str(port)
        self.base = {
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": multiprocess, "wsgi.run_once": False,
            "wsgi.input_terminated": True, "SCRIPT_NAME": "", "SERVER_NAME": host, "SERVER_PORT": str(port),
            "SERVER_SOFTWARE": "replica",
        }


def path_info(raw_path: bytes) -> str:
    """PATH_INFO as WSGI spells it: percent-decoded bytes, read as latin-1."""
    return (unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path).decode("latin-1")


def plain_request_id(value: bytes) -> bool:
    """Whether a request id a client sent may be used as it is: a token of at most 64 characters, which a log
    line or a header can carry without quoting."""
    return 0 < len(value) <= 64 and _TOKEN.fullmatch(value) is not None


def request_id(req: Request) -> str:
    """The request's id: the one a load balancer or client sent in X-Request-ID when it is a plain token,
    else a fresh one. It is in the answer's X-Request-ID, the access line and the log of an error."""
    for name, value in req.headers:
        if name.lower() == b"x-request-id" and plain_request_id(value):
            return value.decode("ascii")
    return os.urandom(8).hex()


def environ_for(req: Request, server: ServerInfo, client, rid: str = "") -> dict:
    body = req.body[0] if len(req.body) == 1 else b"".join(req.body)
    req.body = [body]  # the pieces go as soon as they are joined
    env = dict(server.base)
    env["REQUEST_METHOD"] = req.method
    env["PATH_INFO"] = path_info(req.path)
    env["QUERY_STRING"] = req.query.decode("latin-1")
    env["RAW_URI"] = req.target.decode("latin-1")
    env["SERVER_PROTOCOL"] = "HTTP/" + req.version
    env["replica.request_id"] = rid
    env["wsgi.input"] = io.BytesIO(body)
    env["CONTENT_LENGTH"] = str(len(body))  # a chunked body arrives decoded: this is its length
    if isinstance(client, tuple):
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = client[0], str(client[1])
    else:
        env["REMOTE_ADDR"] = str(client or "")
    for name, value in req.headers:
        if b"_" in name:
            continue  # "X_A" and "X-A" would both be HTTP_X_A: one could pass for the other (RFC 9110 17.10)
        key = name.decode("latin-1").upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            env[key] = value.decode("latin-1")
            continue
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is framed already
        key = "HTTP_" + key
        text = value.decode("latin-1")
        env[key] = env[key] + "," + text if key in env else text
    return env


class Answer:
    """WSGI's `start_response` and the head it writes."""

    __slots__ = ("status", "reason", "headers", "has_length", "close")

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.has_length = False
        self.close = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info is not None and self.status:
            raise exc_info[1].with_traceback(exc_info[2])
        code, _, reason = status.partition(" ")
        self.status, self.reason, self.headers = int(code), reason, headers
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                self.has_length = True
            elif lower == "connection" and value.lower() == "close":
                self.close = True
        return self._write_refused

    @staticmethod
    def _write_refused(data: bytes) -> None:
        raise RuntimeError("the replica's front takes the response body from the returned iterable only")

    def head(self, length: int | None, keep_alive: bool, version: str, rid: str) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers if name.lower() != "connection"]
        lines.append(f"X-Request-ID: {rid}")
        if length is not None and not self.has_length:
            lines.append(f"Content-Length: {length}")
        if not keep_alive:
            lines.append("Connection: close")
        elif version == "1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def run(app, req: Request, server: ServerInfo, client, sock: socket.socket, may_keep_alive: bool,
        before_send=None) -> Exchange:
    """Run the app on `req` and send its answer on `sock`; `before_send` runs once the answer is complete, just
    before it leaves. The iterable's `close` (Flask's `call_on_close`, a predictor's post_predict) runs after
    the answer is sent. OSError (the peer gone) propagates: the caller closes the connection."""
    ex = Exchange(request_id=request_id(req))
    answer = Answer()
    result = app(environ_for(req, server, client, ex.request_id), answer.start_response)
    try:
        parts = [bytes(p) for p in result if p]
        ex.status = answer.status
        body = b"".join(parts) if len(parts) != 1 else parts[0]
        length: int | None = len(body)
        if answer.status in NO_BODY_STATUSES or answer.status < 200:
            length, body = None, b""
        elif req.method == "HEAD":
            body = b""
        ex.keep_alive = may_keep_alive and req.keep_alive and not answer.close
        head = answer.head(length, ex.keep_alive, req.version, ex.request_id)
        ex.sent = len(body)
        if before_send is not None:
            before_send()
        if len(head) + len(body) <= SEND_LIMIT:
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            view = memoryview(body)
            for start in range(0, len(body), SEND_LIMIT):
                sock.sendall(view[start:start + SEND_LIMIT])
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return ex


def refusal(status: int, message: str, *, close: bool, retry_after: int | None = None) -> bytes:
    """The loop's own answers (malformed requests, timeouts, shedding): the replica's JSON error body."""
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close" if close else "Connection: keep-alive"]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
