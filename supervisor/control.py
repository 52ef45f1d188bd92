"""The supervisor's control socket: how a worker has versions held on disk (model caching).

An HTTP server on a Unix socket in the private runtime folder (replica/private_dir.py), mode 0600. Two routes,
both idempotent: POST /ensure (put a version on disk and hold it for a worker, after applying the releases that
came with it) and POST /release (versions the worker no longer needs). The supervisor stays the only writer of
the disk tree.

Who asks is what the kernel says of the connecting process (SO_PEERCRED), never what the request claims: a
hold belongs to the peer's pid, so it ends when that process dies, and a peer of another uid (root aside) is
refused with 403. A gunicorn worker connects itself, so its pid is the worker's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from replica import protocol
from supervisor.disk_cache import DiskCache
from supervisor.tree_writes import DiskFull

log = logging.getLogger(__name__)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # socketserver's default backlog is 5, and a Unix-socket connect() beyond the backlog fails at once with
    # EAGAIN (it does not wait as TCP does): every concurrent cache miss of a worker's threads must fit.
    request_queue_size = socket.SOMAXCONN


def control_socket_path(run_dir: Path) -> Path:
    """run/supervisor.sock, or a private folder under /tmp when that path is too long for a Unix socket."""
    path = run_dir / "supervisor.sock"
    if len(str(path)) < 100:
        return path
    return Path(tempfile.mkdtemp(prefix="replica-")) / "supervisor.sock"


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """The pid, uid and gid of the process at the other end of a Unix socket, as the kernel recorded them when
    it connected: what a request body says of itself proves nothing."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def trusted_uid(uid: int) -> bool:
    """Our own uid, or root's (which could take the supervisor over anyway)."""
    return uid in (0, os.geteuid())


def serve_control(path: Path, cache: DiskCache) -> socketserver.BaseServer:
    """Start the control server in a thread, answering for `cache`."""

    def apply(pid: int, releases: tuple[protocol.Release, ...]) -> None:
        for r in releases:
            cache.release(pid, r.name, r.version, r.seq, r.last_used, r.failure)

    def release(pid: int, body: dict) -> dict:
        apply(pid, protocol.parse_releases(body))
        return {"error": None}

    def ensure(pid: int, body: dict) -> dict:
        req = protocol.parse_ensure(body)
        apply(pid, req.releases)
        try:
            fetched = cache.ensure(pid, req.name, req.version, req.seq)
            reply = protocol.EnsureReply(fetched.error, False, fetched.retry_after)
        except DiskFull as e:
            reply = protocol.EnsureReply(str(e), True)
        return protocol.reply_body(reply)

    routes = {protocol.ENSURE: ensure, protocol.RELEASE: release}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            route = routes.get(self.path)
            try:
                pid, uid, _ = peer_credentials(self.connection)
                if not trusted_uid(uid):
                    log.warning("control socket: refused a request from pid %d of uid %d", pid, uid)
                    reply, status = {"error": "this process's user may not use the control socket"}, 403
                elif route is None:
                    reply, status = {"error": f"no route {self.path}"}, 404
                else:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    reply, status = route(pid, body), 200
            except (protocol.ProtocolError, ValueError) as e:  # off the protocol (or not JSON at all)
                reply, status = {"error": str(e)}, 400
            except Exception as e:  # a bad request must not take the control server down
                log.exception("control request failed")
                reply, status = {"error": f"{type(e).__name__}: {e}"}, 500
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            pass

    if path.exists():
        path.unlink()
    server = _UnixHTTPServer(str(path), Handler)
    os.chmod(path, 0o600)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    return server
