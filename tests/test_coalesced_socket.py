"""A response leaves the front worker in one send: a worker killed mid-answer has sent all of it or nothing."""

from __future__ import annotations

import socket
import threading

from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from workers.connections import CoalescedSocket


class CountingSocket:
    """A real socket that counts the sends made on it."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sends = 0

    def sendall(self, data) -> None:
        self.sends += 1
        self.sock.sendall(data)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def _respond(body: bytes, limit: int = 256 * 1024) -> tuple[int, bytes]:
    writer, reader = socket.socketpair()
    received: list[bytes] = []

    def read() -> None:
        while chunk := reader.recv(1 << 20):
            received.append(chunk)

    with writer, reader:
        reader.settimeout(10)
        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        counted = CountingSocket(writer)
        out = CoalescedSocket(counted, limit=limit)
        cfg = Config()
        req = next(RequestParser(cfg, [b"GET / HTTP/1.1\r\nHost: replica\r\n\r\n"], ("127.0.0.1", 5000)))
        resp, _ = wsgi.create(req, out, ("127.0.0.1", 5000), ("127.0.0.1", 8888), cfg)
        resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        for i in range(0, len(body), 1000):  # a body in pieces, as an app iterator yields it
            resp.write(body[i:i + 1000])
        resp.close()
        out.flush()
        writer.shutdown(socket.SHUT_WR)
        reading.join(10)
    return counted.sends, b"".join(received)


def test_head_and_body_leave_in_one_send():
    sends, received = _respond(b'{"label": "setosa"}' * 100)
    assert sends == 1
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b'{"label": "setosa"}' * 100


def test_a_large_body_is_sent_whole_in_bounded_pieces():
    body = bytes(range(256)) * 4000  # 1,024,000 bytes
    sends, received = _respond(body, limit=64 * 1024)
    assert 1 < sends <= len(body) // (64 * 1024) + 2
    assert received.partition(b"\r\n\r\n")[2] == body
