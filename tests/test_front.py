"""The HTTP front against real peers on loopback: slow and idle clients never starve a well-behaved one, each is
closed by its deadline, and requests over autoscaling.max_replica_concurrency are shed with 503 (then served
again)."""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml

from tests.helpers import serving, write_api
from tests.replica_proc import wait_for

ECHO = """
import os
import time

import flask


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload, query_params):
        if "started" in query_params:
            open(query_params["started"], "w").close()
        if "sleep" in query_params:
            time.sleep(float(query_params["sleep"]))
        if "pid" in query_params:
            return {"pid": os.getpid()}
        if "abort" in query_params:
            flask.abort(int(query_params["abort"]), query_params.get("why"))
        if isinstance(payload, (bytes, str)):
            return {"length": len(payload)}
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


def count(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in /metrics text whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_predictor_abort_answers_its_own_status(replica):
    resp = replica.post("/", json={}, params={"abort": 400, "why": "bad x"})
    assert resp.status_code == 400
    assert resp.json() == {"error": "bad x"}
    resp = replica.post("/", json={}, params={"abort": 404, "why": "no such thing"})
    assert (resp.status_code, resp.json()) == (404, {"error": "no such thing"})
    metrics = replica.get("/metrics").text
    assert count(metrics, "replica_requests_total", code="400") >= 1
    assert count(metrics, "replica_requests_total", code="500") == 0


def test_over_max_replica_concurrency_sheds_with_503_then_serves(tmp_path):
    spec = write_api(tmp_path, ECHO, type="python", name="shed")
    doc = yaml.safe_load(spec.read_text())
    doc[0]["autoscaling"] = {"max_replica_concurrency": 1}
    spec.write_text(yaml.safe_dump(doc))
    started = tmp_path / "started"
    with serving(spec, tmp_path / "state") as r:
        slow: dict = {}
        t = threading.Thread(target=lambda: slow.update(resp=r.post("/", json={"slow": 1}, params={
            "sleep": 3, "started": str(started)})))
        t.start()
        try:
            wait_for(started.exists, timeout=10, interval=0.05, message="the slow request running")
            shed = r.post("/", json={"fast": 1}, timeout=2)
            assert shed.status_code == 503, shed.text
            assert shed.headers["Retry-After"] == "1"
            assert "max_replica_concurrency" in shed.json()["error"]
            # The Open Inference Protocol's infer is a prediction too.
            v2 = r.post("/v2/models/shed/infer", timeout=2, json={
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
            assert v2.status_code == 503 and "max_replica_concurrency" in v2.json()["error"], v2.text
            # Only predictions count: a health check waits for the busy thread instead of being shed.
            assert r.get("/healthz", timeout=10).status_code == 200
        finally:
            t.join(10)
        assert slow["resp"].status_code == 200
        metrics = r.get("/metrics", timeout=5).text
        assert count(metrics, "replica_requests_shed_total") == 2
        assert count(metrics, "replica_requests_total", code="503") == 2
        after = r.post("/", json={"fast": 2}, timeout=5)
        assert (after.status_code, after.json()) == (200, {"echo": {"fast": 2}})


@pytest.mark.parametrize("flag, value, says", [("--header-timeout", "0", "--header-timeout must be > 0 seconds"),
                                               ("--body-timeout", "-1", "--body-timeout must be > 0 seconds"),
                                               ("--keep-alive", "-1", "--keep-alive must be >= 0 seconds")])
def test_bad_deadline_flag_stops_start_up(tmp_path, flag, value, says):
    spec = write_api(tmp_path, ECHO, type="python", name="flags")
    out = subprocess.run([sys.executable, "-m", "supervisor.cli", "serve", str(spec), "--state-dir", str(tmp_path / "s"),
                          flag, value], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_keep_alive_connections_spread_over_the_worker_processes(tmp_path):
    """Eight keep-alive connections, opened one after another, end up four on each of two processes (gunicorn's
    gthread worker lets whichever process wins the accept race keep all of them)."""
    spec = write_api(tmp_path, ECHO, type="python", name="spread", processes_per_replica=2)
    with serving(spec, tmp_path / "state") as r:
        sessions = [requests.Session() for _ in range(8)]
        try:
            owners = []
            for s in sessions:
                owners.append(s.post(r.base + "/", json={}, params={"pid": 1}, timeout=10).json()["pid"])
                time.sleep(0.05)  # the other process sees the new count (it re-reads the board every 10 ms)
            for s, pid in zip(sessions, owners):  # each connection stays with its process
                assert s.post(r.base + "/", json={}, params={"pid": 1}, timeout=10).json()["pid"] == pid
        finally:
            for s in sessions:
                s.close()
    counts = sorted(owners.count(pid) for pid in set(owners))
    assert counts == [4, 4], owners


def test_endless_request_head_is_refused_with_431(replica):
    with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 900_000)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert replica.get("/healthz").status_code == 200
