"""Full garbage collections after unloads, batched on a thread of their own instead of one per eviction.

An unloaded model's memory is mostly freed by reference counting the moment its last reference goes; what a
framework keeps in reference cycles (sessions, graphs, their Python wrappers) waits for a full collection. A full
collection walks every tracked object in the worker (with a big catalogue, the listing's objects too) and holds
the interpreter while it runs, so one per eviction put that pause on every miss. Here an unload only asks for a
collection; one thread runs it, at most once per `interval`, covering every unload asked for since the last one:
the pause is paid once for a burst of evictions, never on the thread that serves the miss, and memory held in
cycles is back within about `interval`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from workers import memory

log = logging.getLogger(__name__)


class DeferredCollector:
    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.collections = 0  # full collections run so far (for tests and the log)
        self._due = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        """Ask for a full collection soon (called after an unload); returns at once."""
        with self._lock:
            self._idle.clear()
            self._due.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every collection asked for has run."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            self._due.wait()
            with self._lock:
                self._due.clear()
            started = time.monotonic()
            freed = gc.collect()
            memory.give_back()  # what the cycles held goes back to the system, not only to malloc
            self.collections += 1
            log.debug("full collection after unloads: %d objects in %.3fs", freed, time.monotonic() - started)
            with self._lock:
                if not self._due.is_set():
                    self._idle.set()
            time.sleep(self.interval)  # the rate bound: later unloads share the next collection
