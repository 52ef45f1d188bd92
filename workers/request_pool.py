"""A front worker's request threads: at most `size` of them run requests at once, and a request that waits for
something other than user code hands its turn over while it waits.

`threads_per_process` bounds how many requests run the predictor at once. A request waiting for its model's
bring-in (a cache miss: download and `load_model`, seconds) runs nothing, yet holds a thread; with every thread
waiting so, a request for a model already in memory would queue behind the misses. So a waiting request gives
its turn back for the length of the wait (`waiting_outside`), a spare thread takes the next request, and the
waiter takes a turn again before it goes on: the predictor still never runs on more than `size` threads, and
hits are served while misses wait (Java's `ForkJoinPool.ManagedBlocker`, Go's hand-off of a blocked thread's
processor). Spare threads above `size` plus the waiting ones end once they are idle.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterator

SPARE_THREADS = 64  # threads beyond `size` at most, one per request waiting outside its turn

_local = threading.local()  # the pool whose turn this thread holds, while it serves a request


class RequestPool:
    def __init__(self, size: int, serve: Callable[[Any], None], name: str = "request"):
        self.size = size
        self.serve = serve
        self.name = name
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.turns = threading.Semaphore(size)
        self._lock = threading.Lock()
        self.threads = 0
        self.idle = 0
        self.waiting = 0

    def start(self) -> None:
        with self._lock:
            self.threads += self.size
        for _ in range(self.size):
            self._spawn()

    def put(self, job: Any) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        """Each thread ends once the jobs queued before this are done."""
        with self._lock:
            n = self.threads
        for _ in range(n):
            self.jobs.put(None)

    def _spawn(self) -> None:
        threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self.idle += 1
            job = self.jobs.get()
            with self._lock:
                self.idle -= 1
                if job is None:
                    self.threads -= 1
                    return
            with self.turns:
                _local.pool = self
                try:
                    self.serve(job)
                finally:
                    _local.pool = None
            with self._lock:
                if self.threads > self.size + self.waiting:  # a spare no longer needed
                    self.threads -= 1
                    return

    @contextlib.contextmanager
    def _outside(self) -> Iterator[None]:
        with self._lock:
            self.waiting += 1
            spawn = self.idle == 0 and self.threads < self.size + SPARE_THREADS
            if spawn:
                self.threads += 1
        if spawn:
            self._spawn()
        self.turns.release()
        try:
            yield
        finally:
            with self._lock:
                self.waiting -= 1
            self.turns.acquire()


@contextlib.contextmanager
def waiting_outside() -> Iterator[None]:
    """Wrap a wait that runs no user code: on a request thread of a pool, its turn goes to another request for
    the length of the wait; anywhere else (a predictor's own thread, the loop's thread) it changes nothing."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        yield
        return
    _local.pool = None  # a nested wait inside this one holds no turn to give
    try:
        with pool._outside():
            yield
    finally:
        _local.pool = pool
