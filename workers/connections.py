"""What the front worker's event loop keeps per client connection, and how responses leave it.

A connection is IDLE (waiting for a request), reading its HEAD or BODY, BUSY while a thread serves it, or
LINGERing on its way out. A response is written through `CoalescedSocket`, so it leaves in one send.
"""

from __future__ import annotations

import json
import socket

from workers import framing

IDLE, HEAD, BODY, BUSY, LINGER = range(5)


class Conn:
    """One client connection, owned by the event loop except while a thread serves its request (BUSY)."""

    __slots__ = ("sock", "fd", "client", "server", "buf", "state", "deadline", "head", "body_end", "scan",
                 "sent_continue", "registered")

    def __init__(self, sock: socket.socket, client, server):
        self.sock, self.fd, self.client, self.server = sock, sock.fileno(), client, server
        self.buf = bytearray()
        self.state = IDLE
        self.deadline = 0.0
        self.head: framing.Head | None = None
        self.body_end = -1
        self.scan = 0
        self.sent_continue = False
        self.registered = False


class CoalescedSocket:
    """The socket a response is written through: what gunicorn sends in several writes (the head, then each
    body chunk) leaves in one, up to `limit` bytes at a time, when the response is complete (`flush`).

    A worker killed mid-response has then sent either nothing, which a load balancer retries (HAProxy's
    `retry-on empty-response`), or the whole answer: never a head whose body never comes. One send instead of
    two is also cheaper. Anything else (timeouts, `fileno`, ...) is the real socket's."""

    __slots__ = ("sock", "limit", "_parts", "_size")

    def __init__(self, sock: socket.socket, limit: int = 256 * 1024):
        self.sock = sock
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def sendall(self, data) -> None:
        self._parts.append(bytes(data))
        self._size += len(data)
        if self._size >= self.limit:
            self.flush()

    def send(self, data) -> int:
        self.flush()
        return self.sock.send(data)

    def sendfile(self, *args, **kwargs):
        self.flush()
        return self.sock.sendfile(*args, **kwargs)

    def flush(self) -> None:
        if self._parts:
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            self.sock.sendall(data)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def answer(status: int, reason: str, message: str, *, close: bool, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Connection: close" if close else "Connection: keep-alive"]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
