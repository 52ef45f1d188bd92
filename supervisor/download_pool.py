"""A bounded pool of daemon threads, for the watcher's version downloads and for the parts of every download."""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class DownloadPool:
    """A bounded pool of daemon threads that run downloads (whole versions, or the parts of files) off their caller.

    Daemon threads, because a download blocked on a silent upstream must never hold up the replica's exit
    (the stall deadline ends it, the process exit ends it sooner). Threads are started on demand, up to
    `size`, and end once the queue is empty, so an idle replica keeps no thread."""

    def __init__(self, size: int, name: str = "download"):
        self.size = max(1, size)
        self.name = name
        self._lock = threading.Lock()
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._running = 0
        self._started = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job`; it runs as soon as one of the pool's threads is free."""
        with self._lock:
            self._queue.append(job)
            if self._running >= self.size:
                return
            self._running += 1
            self._started += 1
            number = self._started
        threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running -= 1
                    return
                job = self._queue.popleft()
            try:
                job()
            except BaseException:  # a job answers for itself; this thread goes on with the next one
                log.exception("a download job failed")
