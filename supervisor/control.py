"""The supervisor's control socket: how a worker asks for a version to be put on disk.

An HTTP server on a Unix socket in the state directory's run/ folder, reachable only from this machine's
processes that can open that folder. The supervisor stays the only writer of the disk tree.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

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


def serve_control(path: Path, fetch) -> socketserver.BaseServer:
    """Start the control server in a thread; `fetch(name, version, resident, report)` answers POST /fetch."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                error = fetch(str(body["name"]), int(body["version"]), [tuple(r) for r in body.get("resident", [])],
                              body.get("report"))
                reply, status = {"error": error}, 200
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
