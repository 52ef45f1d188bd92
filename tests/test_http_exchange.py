"""One request through the WSGI app (workers.http_exchange), over a real socket pair: the environ a Flask app
sees is built from the one parse, and the answer leaves in one send, so a worker killed mid-answer has sent all
of it or nothing."""

from __future__ import annotations

import socket
import threading

from flask import Flask, Response, jsonify, request

from workers import http_exchange
from workers.http_parse import Limits, RequestParser

SERVER = http_exchange.ServerInfo(("127.0.0.1", 8888), multiprocess=False)


class CountingSocket:
    """A real socket that counts the sends made on it."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sends = 0

    def sendall(self, data) -> None:
        self.sends += 1
        self.sock.sendall(data)


def exchange(app, raw: bytes, *, keep_alive: bool = True, before_send=None) -> tuple[http_exchange.Exchange, int, bytes]:
    parser = RequestParser(Limits(4094, 100, 8190, 1 << 24))
    parser.feed(raw)
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
        ex = http_exchange.run(app, parser.ready.popleft(), SERVER, ("127.0.0.1", 5000), counted, keep_alive,
                               before_send=before_send)
        writer.shutdown(socket.SHUT_WR)
        reading.join(10)
    return ex, counted.sends, b"".join(received)


def make_app() -> Flask:
    app = Flask("t")

    @app.route("/echo/<path:rest>", methods=["GET", "POST"])
    def echo(rest):
        return jsonify(path=request.path, rest=rest, query=request.args.to_dict(), body=request.get_data(as_text=True),
                       forwarded=request.headers.get("X-Forwarded-For"), under=request.headers.get("X-Under"),
                       remote=request.remote_addr, length=request.content_length)

    @app.route("/big")
    def big():
        return Response(b"x" * 1_000_000, mimetype="application/octet-stream")

    @app.route("/streamed")
    def streamed():
        return Response((b"part%d;" % i for i in range(1000)), mimetype="text/plain")

    return app


def test_head_and_body_leave_in_one_send():
    ex, sends, got = exchange(make_app(), b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sends == 1 and ex.status == 200 and ex.keep_alive
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" not in head
    assert f"Content-Length: {len(body)}".encode() in head


def test_a_streamed_body_is_sent_whole_with_its_length_and_a_large_one_in_bounded_pieces():
    ex, sends, got = exchange(make_app(), b"GET /streamed HTTP/1.1\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert sends == 1 and body == b"".join(b"part%d;" % i for i in range(1000))
    assert f"Content-Length: {len(body)}".encode() in head
    ex, sends, got = exchange(make_app(), b"GET /big HTTP/1.1\r\n\r\n")
    assert got.partition(b"\r\n\r\n")[2] == b"x" * 1_000_000
    assert sends == 1 + -(-1_000_000 // http_exchange.SEND_LIMIT)


def test_the_environ_is_what_the_request_said():
    raw = (b"POST /echo/%70redict?a=1&b=%20 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n"
           b"X-Forwarded-For: 5.6.7.8\r\nX_Under: sneaky\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    ex, _, got = exchange(make_app(), raw)
    import json
    body = json.loads(got.partition(b"\r\n\r\n")[2])
    assert body["path"] == "/echo/predict" and body["query"] == {"a": "1", "b": " "}
    assert body["body"] == "abcde" and body["length"] == 5  # decoded chunks, with their length
    assert body["forwarded"] == "1.2.3.4,5.6.7.8"  # repeated fields joined, as gunicorn does
    assert body["under"] is None  # "X_Under" could pass for "X-Under": dropped
    assert body["remote"] == "127.0.0.1"


def test_connection_close_and_http_1_0_keep_alive_are_answered_in_kind():
    ex, _, got = exchange(make_app(), b"GET /echo/a HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert not ex.keep_alive and b"Connection: close" in got.partition(b"\r\n\r\n")[0]
    ex, _, got = exchange(make_app(), b"GET /echo/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert ex.keep_alive and b"Connection: keep-alive" in got.partition(b"\r\n\r\n")[0]
    ex, _, got = exchange(make_app(), b"GET /echo/a HTTP/1.1\r\n\r\n", keep_alive=False)
    assert not ex.keep_alive and b"Connection: close" in got


def test_after_the_answer_runs_once_it_is_sent_and_counting_stops_before():
    events: list[str] = []
    app = Flask("t")

    @app.route("/")
    def index():
        resp = Response("ok")
        resp.call_on_close(lambda: events.append("closed"))
        return resp

    exchange(app, b"GET / HTTP/1.1\r\n\r\n", before_send=lambda: events.append("before send"))
    assert events == ["before send", "closed"]


def test_head_requests_and_204_carry_no_body():
    ex, _, got = exchange(make_app(), b"HEAD /echo/a HTTP/1.1\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert body == b"" and b"Content-Length:" in head and ex.status == 200
    app = Flask("t")
    app.add_url_rule("/", "n", lambda: ("", 204))
    _, _, got = exchange(app, b"GET / HTTP/1.1\r\n\r\n")
    assert got.endswith(b"\r\n\r\n") and b"Content-Length" not in got
