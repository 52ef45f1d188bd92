"""Connections from the peer's side, against a real replica on loopback (1 process x 1 thread, a small python
predictor), over raw sockets:

- peers that close or reset early (before reading the answer, or while their prediction runs) cost the worker
  nothing once they are gone: its open file descriptors and memory come back to where they were, and the next
  client is answered as usual;
- a replica told to stop (SIGTERM) with nothing in flight exits at once, however many connections it saw;
- clients that hold idle keep-alive connections up to `--worker-connections` never lock a new client out: the
  longest-idle connection gives way and the newcomer is answered at once.

A soak (marked slow) repeats the first two with 100,000 early closers and 10,000 mid-request resets; a smaller
slice of it runs in the normal suite.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import serving, write_api
from tests.replica_proc import ReplicaProcess, wait_for
from tests.test_front import ECHO as PREDICTOR


# Deadlines far longer than any wait below: a connection that goes away here is freed because its peer left,
# never because a timer ran out.
LONG_DEADLINES = ("--header-timeout", "60", "--keep-alive", "60")
FD_SLACK = 2
FD_SETTLE_S = 10.0  # a closed peer's socket is gone well within this (a worker lingers at most 2 s on a close)
RSS_GROWTH_LIMIT = 30 << 20

EARLY_CLOSE_REQUESTS = (b"GET /readyz HTTP/1.0\r\n\r\n",
                        b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
HEALTHZ_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
START_WAIT_S = 10.0  # a connection not made, or a sent prediction not started, by then never will be
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset instead of a FIN


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------

def start_replica(folder: Path, *extra_args: str, name: str = "conn"):
    """A 1 x 1 replica of PREDICTOR in `folder`, with long deadlines; a context manager (stopped by PID)."""
    spec = write_api(folder, PREDICTOR, type="python", name=name)
    return serving(spec, folder / "state", extra_args=(*LONG_DEADLINES, *extra_args))


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    except OSError:
        pass
    sock.close()


def read_response(sock: socket.socket, deadline_s: float = 10) -> tuple[int, bytes]:
    """Read one HTTP response (Content-Length framed, or up to EOF); return (status, body)."""
    sock.settimeout(deadline_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                   if k.strip().lower() == "content-length"), None)
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            if length is None:
                break
            raise ConnectionError(f"closed after {len(body)} of {length} body bytes")
        body += chunk
    return status, body


def get_once(port: int, path: str = "/healthz", timeout: float = 10) -> tuple[int, bytes]:
    """One request on a new connection (Connection: close); the status and body."""
    with connect(port, timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return read_response(s, timeout)


def predict_once(port: int, payload: dict, timeout: float = 10) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    with connect(port, timeout) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        return read_response(s, timeout)


def fds(replica: ReplicaProcess) -> dict[int, int]:
    """Open file descriptors of each worker process, by PID."""
    return {pid: psutil.Process(pid).num_fds() for pid in replica.worker_pids()}


def rss(replica: ReplicaProcess) -> dict[int, int]:
    return {pid: psutil.Process(pid).memory_info().rss for pid in replica.worker_pids()}


def warm_up(replica: ReplicaProcess) -> None:
    """Serve one request of each kind the tests send, so that what a worker opens once (metrics files, ...) is
    open before any baseline is taken."""
    for path in ("/readyz", "/healthz"):
        assert get_once(replica.port, path)[0] == 200
    status, body = predict_once(replica.port, {"warm": 1})
    assert (status, json.loads(body)) == (200, {"echo": {"warm": 1}})


def await_fds_back(replica: ReplicaProcess, baseline: dict[int, int], what: str) -> dict[int, int]:
    """Wait until every worker holds no more descriptors than in `baseline` (+ FD_SLACK), with the same PIDs."""
    def back():
        now = fds(replica)
        assert now.keys() == baseline.keys(), f"the workers changed: {sorted(baseline)} -> {sorted(now)}"
        return now if all(now[p] <= baseline[p] + FD_SLACK for p in now) else None

    try:
        return wait_for(back, timeout=FD_SETTLE_S, interval=0.1, message=f"worker descriptors back after {what}")
    except TimeoutError:
        raise AssertionError(f"after {what}, worker descriptors did not come back within {FD_SETTLE_S:g}s: "
                             f"before {baseline}, now {fds(replica)} (slack {FD_SLACK})") from None


def stop_and_time(replica: ReplicaProcess, limit_s: float) -> float:
    """SIGTERM the replica (its supervisor, as systemd does) and return how long until the whole replica exited;
    fail if that is more than `limit_s` (the fixture then stops what is left)."""
    started = time.monotonic()
    replica.proc.send_signal(signal.SIGTERM)
    try:
        replica.proc.wait(limit_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the replica was still running {limit_s:g}s after SIGTERM with nothing in flight "
                             f"(workers: {replica.worker_pids()})") from None
    return time.monotonic() - started


# ------------------------------------------------------------------------------------------------------------
# Peers
# ------------------------------------------------------------------------------------------------------------

def early_closers(port: int, n: int, *, requests=EARLY_CLOSE_REQUESTS, how: str = "close",
                  concurrency: int = 64, time_limit_s: float = 60) -> int:
    """`n` peers, at most `concurrency` connecting at once: each connects, sends its request and closes (`how`:
    "close", a FIN, or "reset") without reading anything. Returns how many were sent; fails past `time_limit_s`."""
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + time_limit_s
    opened = done = 0
    progress = (0, time.monotonic())  # (done, when it last grew)
    try:
        while done < n:
            now = time.monotonic()
            assert now < deadline, f"only {done} of {n} early-closing peers in {time_limit_s:g}s"
            if done > progress[0]:
                progress = (done, now)
            assert now - progress[1] < START_WAIT_S, \
                f"no connection completed for {START_WAIT_S:g}s ({done} of {n} peers so far): the replica stopped " \
                "accepting connections"
            while opened < n and opened - done < concurrency:
                s = socket.socket()
                s.setblocking(False)
                err = s.connect_ex(("127.0.0.1", port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    if err in (errno.EADDRNOTAVAIL, errno.EAGAIN):  # out of local ports for a moment
                        break
                    raise OSError(err, os.strerror(err))
                sel.register(s, selectors.EVENT_WRITE, requests[opened % len(requests)])
                opened += 1
            for key, _ in sel.select(0.5):
                s = key.fileobj
                sel.unregister(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    try:
                        s.send(key.data)
                    except OSError:
                        pass
                if how == "reset":
                    reset(s)
                else:
                    s.close()
                done += 1
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    return done


def mid_prediction_resets(port: int, n: int, folder: Path, *, sleep_s: float, in_flight: int = 4,
                          time_limit_s: float = 60) -> int:
    """`n` peers, `in_flight` at a time, each sending a prediction that sleeps `sleep_s` and resetting its
    connection once the predictor has started it (it marks a file) and before its answer arrived (one whose
    answer came first is closed and replaced). Returns how many were reset mid-prediction."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + time_limit_s
    pending: dict[Path, socket.socket] = {}
    opened = done = 0
    try:
        while done < n:
            assert time.monotonic() < deadline, f"only {done} of {n} mid-prediction resets in {time_limit_s:g}s"
            while done + len(pending) < n and len(pending) < in_flight:
                marker = folder / f"started-{opened}"
                body = b'{"reset": %d}' % opened
                s = connect(port)
                s.sendall(b"POST /?sleep=%s&started=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (str(sleep_s).encode(), str(marker).encode(), len(body), body))
                pending[marker] = s
                opened += 1
            wait_s = min(START_WAIT_S, max(deadline - time.monotonic(), 0.1))
            try:
                started = wait_for(lambda: [m for m in pending if m.exists()], timeout=wait_s, interval=0.002)
            except TimeoutError:
                raise AssertionError(f"none of {len(pending)} predictions sent started within {wait_s:.0f}s "
                                     f"({done} of {n} reset so far): the replica stopped serving") from None
            for marker in started:
                s = pending.pop(marker)
                marker.unlink()
                if answered(s):
                    s.close()
                else:
                    reset(s)
                    done += 1
    finally:
        for s in pending.values():
            s.close()
    return done


def answered(sock: socket.socket) -> bool:
    """Whether any of the answer (or the server's close) has arrived, without waiting or consuming it."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # a socket with a timeout would wait for the answer despite MSG_DONTWAIT
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
    return True


# ------------------------------------------------------------------------------------------------------------
# Early closers and resets (300 of each kind), then a stop
# ------------------------------------------------------------------------------------------------------------

N_PEERS = 300
N_MID_PREDICTION = 12
PREDICTION_SLEEP_S = 0.3


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conn")
    with start_replica(folder) as r:
        yield r


@pytest.fixture(scope="module")
def after_peers(replica, tmp_path_factory):
    """The module's replica after 300 peers that close without reading, 300 that reset right after sending and
    12 that reset while their prediction runs; the workers' descriptors from before them."""
    warm_up(replica)
    baseline = fds(replica)
    assert baseline, "no worker processes found"
    assert early_closers(replica.port, N_PEERS) == N_PEERS
    assert early_closers(replica.port, N_PEERS, how="reset") == N_PEERS
    assert mid_prediction_resets(replica.port, N_MID_PREDICTION, tmp_path_factory.mktemp("markers"),
                                 sleep_s=PREDICTION_SLEEP_S) == N_MID_PREDICTION
    return baseline


def test_early_closing_and_resetting_peers_leave_no_descriptors_behind(replica, after_peers):
    """Peers that close or reset before reading their answer, or while their prediction runs, are forgotten once
    gone: each worker's open descriptors come back to what they were before them (within 10 s, although no
    deadline of the replica expires that soon), and the next client is answered normally."""
    await_fds_back(replica, after_peers, f"{N_PEERS} early closers, {N_PEERS} resets and {N_MID_PREDICTION} "
                                         "mid-prediction resets")
    assert get_once(replica.port, "/healthz")[0] == 200
    status, body = predict_once(replica.port, {"after": 1})
    assert (status, json.loads(body)) == (200, {"echo": {"after": 1}})


def test_stop_with_nothing_in_flight_exits_at_once(replica, after_peers):
    """A replica that has seen hundreds of connections come and go, with none open and nothing in flight now,
    exits within 5 s of SIGTERM (it aims for 2 s): it does not wait out its drain timeout (30 s)."""
    assert get_once(replica.port, "/healthz")[0] == 200
    took = stop_and_time(replica, 5.0)
    assert took < 5.0


# ------------------------------------------------------------------------------------------------------------
# --worker-connections: held connections give way to new clients
# ------------------------------------------------------------------------------------------------------------

WORKER_CONNECTIONS = 50
MAX_RECONNECTS = 500


class Holders:
    """`n` keep-alive connections, each having sent one GET /healthz and read its answer, then silent; one the
    replica closes is opened again (at most MAX_RECONNECTS times in all) by a background thread."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.closed_by_server = self.reconnects = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _open(self) -> None:
        s = connect(self.port)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _ = read_response(s)
        if status != 200:
            self.errors.append(f"holder answered {status}")
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)

    def __enter__(self) -> "Holders":
        for _ in range(self.n):
            self._open()
        self.thread.start()
        return self

    def held(self) -> int:
        return len(self.sel.get_map())

    def _watch(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue
                self.sel.unregister(s)
                s.close()
                self.closed_by_server += 1
                if self.reconnects < MAX_RECONNECTS and not self.stop.is_set():
                    self.reconnects += 1
                    try:
                        self._open()
                    except OSError as e:
                        self.errors.append(repr(e))

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


def test_held_connections_never_lock_out_a_new_client(tmp_path):
    """With `--worker-connections 50` and 50 idle keep-alive connections held open (and reopened whenever the
    replica closes one), a new client's 20 requests, each on a new connection, are all answered 200 within 1 s:
    the longest-idle held connection gives way to each newcomer."""
    with start_replica(tmp_path, "--worker-connections", str(WORKER_CONNECTIONS)) as r, \
            Holders(r.port, WORKER_CONNECTIONS) as holders:
        assert holders.held() == WORKER_CONNECTIONS
        latencies, answers = [], []
        for _ in range(20):
            started = time.perf_counter()
            try:
                answers.append(get_once(r.port, "/healthz", timeout=1.0)[0])
            except OSError as e:  # socket.timeout included
                answers.append(repr(e))
            latencies.append(time.perf_counter() - started)
    assert answers == [200] * 20, answers
    assert max(latencies) < 1.0, [f"{t * 1000:.0f} ms" for t in latencies]
    assert statistics.median(latencies) < 0.25, f"p50 {statistics.median(latencies) * 1000:.0f} ms"
    assert not holders.errors, holders.errors[:5]
    assert holders.closed_by_server >= 1, "no held connection gave way: the limit was never reached"


# ------------------------------------------------------------------------------------------------------------
# Soak: many early closers and mid-request resets; flat descriptors and memory; a quick stop
# ------------------------------------------------------------------------------------------------------------

SOAK_SLEEP_S = 0.02


def soak(folder: Path, closers: int, resets: int, time_limit_s: float) -> None:
    """`closers` early-closing peers (Connection: close GET /healthz, closed unread, 64 at once) alongside
    `resets` peers that reset mid-prediction; then each worker's descriptors are back to their baseline (+2), its
    RSS grew by less than 30 MiB, a normal request answers 200, and SIGTERM stops the replica within 3 s."""
    with start_replica(folder) as r:
        warm_up(r)
        # Warm-up traffic of the same kinds: what the first requests allocate once is not growth.
        early_closers(r.port, 200, requests=(HEALTHZ_CLOSE,))
        mid_prediction_resets(r.port, 20, folder / "warm", sleep_s=SOAK_SLEEP_S)
        base_fds = await_fds_back(r, fds(r), "the warm-up")
        base_rss = rss(r)

        results: dict[str, object] = {}

        def run_resets():
            try:
                results["resets"] = mid_prediction_resets(r.port, resets, folder / "markers", sleep_s=SOAK_SLEEP_S,
                                                          time_limit_s=time_limit_s)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                results["resets"] = e

        t = threading.Thread(target=run_resets, daemon=True)
        t.start()
        try:
            sent = early_closers(r.port, closers, requests=(HEALTHZ_CLOSE,), time_limit_s=time_limit_s)
        finally:
            t.join(time_limit_s + 30)
        assert sent == closers
        assert results.get("resets") == resets, results.get("resets")

        now_fds = await_fds_back(r, base_fds, f"{closers} early closers and {resets} mid-prediction resets")
        growth = {pid: rss_now - base_rss[pid] for pid, rss_now in rss(r).items()}
        assert all(g < RSS_GROWTH_LIMIT for g in growth.values()), \
            f"worker RSS grew by {[f'{g / 2**20:.1f} MiB' for g in growth.values()]} (fds {base_fds} -> {now_fds})"
        assert get_once(r.port, "/healthz")[0] == 200
        assert predict_once(r.port, {"after": "soak"})[0] == 200
        took = stop_and_time(r, 3.0)
        assert took < 3.0


def test_soak_slice_early_closers_and_resets(tmp_path):
    """2,000 early closers and 200 mid-prediction resets: descriptors and memory flat, a quick stop after."""
    soak(tmp_path, closers=2_000, resets=200, time_limit_s=30)


@pytest.mark.slow
def test_soak_early_closers_and_resets(tmp_path):
    """100,000 early closers and 10,000 mid-prediction resets (at most 10 minutes): descriptors and memory flat,
    a quick stop after."""
    soak(tmp_path, closers=100_000, resets=10_000, time_limit_s=600)
