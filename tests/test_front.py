"""The HTTP front against real peers on loopback: slow and idle clients never starve a well-behaved one, each is
closed by its deadline, and requests over autoscaling.max_replica_concurrency are shed with 503 (then served
again)."""

from __future__ import annotations

import selectors
import socket
import threading
import time

import pytest
import requests

from tests.helpers import serving, write_api
from tests.replica_proc import wait_for

ECHO = """
import time


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload, query_params):
        if "sleep" in query_params:
            time.sleep(float(query_params["sleep"]))
        return {"echo": payload}
"""

HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE = 2.0, 2.0, 2


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    """The default sizing (1 process x 1 thread), short deadlines so that the test sees them pass."""
    folder = tmp_path_factory.mktemp("front")
    spec = write_api(folder, ECHO, type="python", name="front")
    with serving(spec, folder / "state", extra_args=(
            "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
            "--keep-alive", str(KEEP_ALIVE))) as r:
        yield r


class Peers:
    """Misbehaving connections, each watched until the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.socks: dict[socket.socket, dict] = {}
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()

    def open(self, kind: str, first: bytes = b"") -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port))
        if first:
            s.sendall(first)
        self.socks[s] = {"kind": kind, "opened": time.monotonic(), "closed": None, "answer": b""}
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)
        return s

    def run(self) -> None:
        """Drip one header byte a second into each slowloris connection; note when each peer is closed."""
        next_drip = time.monotonic() + 1
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.05):
                s, info = key.fileobj, self.socks[key.fileobj]
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                info["answer"] += data
                if not data:
                    info["closed"] = time.monotonic()
                    self.sel.unregister(s)
            if time.monotonic() >= next_drip:
                next_drip += 1
                for s, info in self.socks.items():
                    if info["kind"] == "slowloris" and info["closed"] is None:
                        try:
                            s.send(b"X")
                        except OSError:
                            pass

    def by_kind(self, kind: str) -> list[dict]:
        return [i for i in self.socks.values() if i["kind"] == kind]

    def close(self) -> None:
        self.stop.set()
        for s in self.socks:
            s.close()


def test_slow_and_idle_peers_never_starve_a_good_client(replica):
    peers = Peers(replica.port)
    for _ in range(50):
        peers.open("slowloris", b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    for _ in range(50):
        peers.open("idle")
    for _ in range(5):
        peers.open("short body", b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 100\r\n\r\n{\"x\": ")
    watcher = threading.Thread(target=peers.run, daemon=True)
    watcher.start()
    latencies, failures = [], []
    try:
        session = requests.Session()
        until = time.monotonic() + max(HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE) + 1.5
        i = 0
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                resp = session.post(replica.base + "/", json={"i": i}, timeout=5)
                ok = resp.status_code == 200 and resp.json() == {"echo": {"i": i}}
                if not ok:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")
            except requests.RequestException as e:
                failures.append(repr(e))
            latencies.append(time.perf_counter() - started)
            i += 1
        # Every slow peer is closed by its deadline (plus the sweep's resolution and a busy machine's slack).
        wait_for(lambda: all(i["closed"] for i in peers.socks.values()), timeout=10,
                 message="every slow or idle peer closed")
    finally:
        peers.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(latencies) >= 50, f"only {len(latencies)} requests in the window"
    assert len(failures) <= len(latencies) * 0.01, failures[:5]
    assert p99 < 0.5, f"p99 {p99 * 1000:.0f} ms over {len(latencies)} requests"
    for kind, deadline, answer in (("slowloris", HEADER_TIMEOUT, b"HTTP/1.1 408 "), ("idle", KEEP_ALIVE, b""),
                                   ("short body", BODY_TIMEOUT, b"HTTP/1.1 408 ")):
        for info in peers.by_kind(kind):
            took = info["closed"] - info["opened"]
            assert deadline - 0.2 <= took <= deadline + 1.5, f"{kind} closed after {took:.2f}s"
            assert info["answer"].startswith(answer), (kind, info["answer"][:100])
    assert b"--header-timeout" in peers.by_kind("slowloris")[0]["answer"]
    assert b"--body-timeout" in peers.by_kind("short body")[0]["answer"]
