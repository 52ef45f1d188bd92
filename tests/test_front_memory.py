"""Request bodies in a worker's memory are bounded (`--max-buffered-bytes`): many large uploads at once wait in
the clients' send buffers instead of growing the worker, and the replica goes on serving."""

from __future__ import annotations

import socket
import threading

import psutil
import pytest

from tests.helpers import serving, write_api
from tests.replica_proc import wait_for
from tests.test_front import ECHO

MIB = 1 << 20
BUDGET = 64 * MIB
BODY = 48 * MIB  # each client sends 40 of these 48 MiB and stops


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    spec = write_api(folder, ECHO, type="python", name="budget")
    with serving(spec, folder / "state", extra_args=("--max-request-size", str(BODY),
                                                     "--max-buffered-bytes", str(BUDGET),
                                                     "--body-timeout", "60")) as r:
        yield r


def test_sixteen_large_uploads_at_once_stay_within_the_body_budget(replica):
    worker = psutil.Process(replica.worker_pids()[0])
    before = worker.memory_info().rss
    socks, sent = [], [0] * 16
    chunk = b"1" * MIB

    def upload(i: int, s: socket.socket) -> None:
        try:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % BODY)
            for _ in range(40):
                s.sendall(chunk)
                sent[i] += 1
        except OSError:
            pass  # a send that times out: the worker is not reading (back-pressure)

    threads = []
    for i in range(16):
        s = socket.create_connection(("127.0.0.1", replica.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        socks.append(s)
        threads.append(threading.Thread(target=upload, args=(i, s), daemon=True))
    peak = before
    try:
        for t in threads:
            t.start()
        # Wait until the worker has taken what it will (the sends stall), sampling its memory all along.
        last = [-1]

        def settled() -> bool:
            nonlocal peak
            peak = max(peak, worker.memory_info().rss)
            total = sum(sent)
            done = total == last[0] or all(not t.is_alive() for t in threads)
            last[0] = total
            return done

        wait_for(settled, timeout=60, interval=2.0, message="the uploads stalled or done")
        assert sum(sent) * MIB > BUDGET, sent  # the clients did try to send more than the budget
        grown = (peak - before) / MIB
        # At most the budget, plus one body still arriving past it, plus the recv buffers of the moment.
        assert grown < (BUDGET + BODY) / MIB + 48, f"worker grew {grown:.0f} MiB for {sum(sent)} MiB sent"
        assert replica.get("/healthz", timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()
        for t in threads:
            t.join(15)
    resp = replica.post("/", json={"after": 1}, timeout=10)
    assert (resp.status_code, resp.json()) == (200, {"echo": {"after": 1}})
