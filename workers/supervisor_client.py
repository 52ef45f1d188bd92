"""Ask the supervisor, over its control socket, to put a model version on disk (model caching)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def request_fetch(path: Path, name: str, version: int, resident: list[tuple[str, int]],
                  report: list[int] | None = None, timeout: float = 600) -> str | None:
    """Ask the supervisor to put a version on disk; return its error, or None once it is there.

    `resident` is what the worker holds or is bringing into memory; `report` ([pid, sequence]) orders those
    snapshots, since concurrent requests can reach the supervisor out of order.
    """
    conn = _UnixConnection(str(path), timeout)
    try:
        body = json.dumps({"name": name, "version": version, "resident": resident, "report": report})
        conn.request("POST", "/fetch", body=body, headers={"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())["error"]
    finally:
        conn.close()
