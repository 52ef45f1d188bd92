"""The control socket (supervisor/control.py) knows its peer from the kernel, not from the request body."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from supervisor.control import serve_control
from supervisor.disk_cache import DiskCache
from supervisor.versions import VersionTable
from supervisor.watcher import Fetched
from replica.protocol import Release
from workers import supervisor_client

REPO = Path(__file__).resolve().parent.parent


class FakeWatcher:
    """What DiskCache needs of the watcher: a fetch that always lands."""

    def __init__(self):
        self.lock = threading.RLock()
        self.installed: dict[str, dict[int, str]] = {}
        self.versions = VersionTable()
        self.make_room = None

    def fetch_version(self, name: str, version: int) -> Fetched:
        with self.lock:
            self.installed.setdefault(name, {})[version] = "fp"
        return Fetched(None)


@pytest.fixture
def control(tmp_path):
    cache = DiskCache(FakeWatcher(), capacity=4)
    path = tmp_path / "c.sock"
    server = serve_control(path, cache)
    yield path, cache
    server.shutdown()
    server.server_close()


# A client that claims to be pid 1 (init never dies, so a hold under its pid would last for ever), then waits.
CLAIMS_PID_1 = """
import http.client, json, socket, sys
from workers.supervisor_client import _UnixConnection
conn = _UnixConnection(sys.argv[1], 10)
conn.request("POST", "/ensure", body=json.dumps({"pid": 1, "name": "m", "version": 1, "seq": 1, "releases": []}))
print(json.loads(conn.getresponse().read()), flush=True)
sys.stdin.read()
"""


def test_a_hold_belongs_to_the_connecting_process_and_ends_with_it(control):
    path, cache = control
    child = subprocess.Popen([sys.executable, "-c", CLAIMS_PID_1, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "{'error': None, 'full': False, 'retry_after': None}"
        with cache._lock:
            assert set(cache._holds[("m", 1)]) == {child.pid}  # the kernel's pid, not the body's 1
            assert cache.held(("m", 1))
    finally:
        child.stdin.close()
        child.wait(10)
    with cache._lock:
        assert not cache.held(("m", 1))  # its holder is dead: the version may leave the disk


def test_the_client_api_needs_no_pid(control):
    path, cache = control
    assert supervisor_client.ensure(str(path), "m", 2, 1, []) == (None, False, None)
    with cache._lock:
        assert set(cache._holds[("m", 2)]) == {os.getpid()}
    supervisor_client.release(str(path), [Release("m", 2, 2, 123.0)])
    with cache._lock:
        assert not cache.held(("m", 2)) and cache.last_used[("m", 2)] >= 123.0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_a_peer_of_another_user_is_refused():
    folder = Path(tempfile.mkdtemp(prefix="control-"))
    os.chmod(folder, 0o711)  # a folder the other uid can pass through (pytest's own are root's alone)
    cache = DiskCache(FakeWatcher(), capacity=4)
    path = folder / "c.sock"
    server = serve_control(path, cache)
    try:
        os.chmod(path, 0o666)  # past the socket's own mode: the check on the peer's uid must hold by itself
        answer = _ask_as_another_uid(path)
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)
    assert answer.startswith("HTTP/1.0 403"), answer
    assert ("m", 3) not in cache._holds


def _ask_as_another_uid(path: Path) -> str:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgid(54321)
            os.setuid(54321)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            body = json.dumps({"name": "m", "version": 3, "seq": 1, "releases": []}).encode()
            s.sendall(b"POST /ensure HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            os.write(w, data)
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer
