"""The front worker's request threads (workers/request_pool.py): a request waiting for its model's bring-in
gives its turn to another, and the predictor never runs on more threads than the pool's size."""

from __future__ import annotations

import threading
import time

from hypothesis import given, settings, strategies as st

from workers.request_pool import RequestPool, waiting_outside


class Probe:
    """Jobs that run "user code" (counted) and optionally wait outside their turn in the middle."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.done: list[str] = []
        self.all_done = threading.Condition(self.lock)

    def _user_code(self, seconds: float) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1

    def serve(self, job) -> None:
        name, wait = job
        self._user_code(0.002)
        if wait is not None:
            with waiting_outside():
                wait.wait(10)
            self._user_code(0.002)
        with self.lock:
            self.done.append(name)
            self.all_done.notify_all()

    def wait_for(self, n: int, timeout: float = 10) -> bool:
        with self.lock:
            return self.all_done.wait_for(lambda: len(self.done) >= n, timeout)


def test_hits_are_served_while_every_thread_waits_for_a_miss():
    probe, loaded = Probe(), threading.Event()
    pool = RequestPool(2, probe.serve)
    pool.start()
    for i in range(4):
        pool.put((f"miss{i}", loaded))
    for i in range(20):
        pool.put((f"hit{i}", None))
    assert probe.wait_for(20)  # every hit answered while four misses (twice the threads) still wait
    assert sorted(probe.done) == sorted(f"hit{i}" for i in range(20))
    loaded.set()
    assert probe.wait_for(24)
    assert probe.most <= 2
    pool.stop()


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 4), jobs=st.lists(st.booleans(), min_size=1, max_size=24))
def test_the_predictor_never_runs_on_more_threads_than_the_pools_size(size, jobs):
    probe, loaded = Probe(), threading.Event()
    pool = RequestPool(size, probe.serve)
    pool.start()
    for i, misses in enumerate(jobs):
        pool.put((str(i), loaded if misses else None))
    assert probe.wait_for(sum(not m for m in jobs))
    loaded.set()
    assert probe.wait_for(len(jobs))
    assert probe.most <= size
    deadline = time.monotonic() + 5
    while pool.threads > size and time.monotonic() < deadline:  # the spares end once idle
        pool.put(("extra", None))
        time.sleep(0.01)
    assert pool.threads == size
    pool.stop()


def test_a_wait_off_a_pools_thread_changes_nothing():
    with waiting_outside():  # the test's own thread holds no turn
        pass
