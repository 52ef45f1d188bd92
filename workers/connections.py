"""What the front worker's event loop keeps per client connection.

A connection is IDLE (no request bytes yet: a fresh connection, or keep-alive between requests), reading a
request's HEAD or BODY, BUSY while its request is served, or LINGERing on its way out (half-closed, waiting a
moment for the peer's FIN so unread bytes do not turn into a reset that cuts the last answer short). The loop
owns it in every state; while BUSY the socket is out of the poller and only the request's writer touches it.
"""

from __future__ import annotations

import socket

from workers.http_exchange import ServerInfo
from workers.http_parse import BadRequest, Limits, RequestParser

IDLE, HEAD, BODY, BUSY, LINGER = "idle", "head", "body", "busy", "linger"


class Conn:
    __slots__ = ("sock", "fd", "client", "server", "parser", "state", "deadline", "registered", "paused",
                 "error", "eof", "counted", "fresh", "due", "abandoned", "request_line")

    def __init__(self, sock: socket.socket, client, server: ServerInfo, limits: Limits):
        self.sock, self.fd, self.client, self.server = sock, sock.fileno(), client, server
        self.parser = RequestParser(limits)
        self.state = IDLE
        self.deadline = 0.0
        self.registered = False
        self.paused = False  # out of the poller while the worker's body budget is spent
        self.error: BadRequest | None = None  # answered (and the connection closed) after the requests before it
        self.eof = False  # the peer sent all it will: answer what is complete, then close
        self.counted = False  # this connection's request in flight is in the replica-wide count
        self.fresh = True  # accepted, no request yet: its first one may be on its way
        self.due = float("inf")  # BUSY: when its request has been in the predictor too long (--request-timeout)
        self.abandoned = False  # its request passed `due`: answered 504 by the loop, the thread left to finish
        self.request_line = ""  # the request being served, for the log and /healthz
