"""A worker's two calls to the supervisor's control socket (model caching): ensure and release.

`ensure` asks for a version to be on disk and held there for this worker; `release` says the worker no longer
needs it, with when a request last used it (the disk tier's LRU order). Both are idempotent and carry a
sequence number: the supervisor keeps, per worker and version, only the call with the highest one. The worker
is the process that connects: the supervisor learns its pid from the kernel (SO_PEERCRED), so nothing here
names it.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Sequence

from replica import protocol
from replica.protocol import EnsureReply, EnsureRequest, Release


class SupervisorUnreachable(Exception):
    """The control socket is missing or does not answer."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _call(path: str | None, route: str, body: dict, timeout: float) -> dict:
    if not path:
        raise SupervisorUnreachable("the supervisor has not published its control socket yet")
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("POST", route, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        reply = json.loads(response.read())
        if response.status == 403:
            raise SupervisorUnreachable(f"the supervisor refused this process: {reply.get('error')}")
        return reply
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise SupervisorUnreachable(f"the supervisor cannot be reached ({type(e).__name__}: {e})") from None
    finally:
        conn.close()


def ensure(path: str | None, name: str, version: int, seq: int, releases: Sequence[Release],
           timeout: float = 600) -> EnsureReply:
    """Apply `releases` (see `release`), then have a version put on disk and held for this process (the
    supervisor knows which from the socket itself)."""
    body = protocol.ensure_body(EnsureRequest(name, version, seq, tuple(releases)))
    try:
        return protocol.parse_reply(_call(path, protocol.ENSURE, body, timeout))
    except protocol.ProtocolError as e:
        raise SupervisorUnreachable(f"the supervisor answered off the protocol ({e})") from None


def release(path: str | None, releases: Sequence[Release], timeout: float = 10) -> None:
    """This process no longer needs these disk copies (each with its last request time, and its load failure
    when it failed to load)."""
    _call(path, protocol.RELEASE, {"releases": [protocol.encode_release(r) for r in releases]}, timeout)
