"""The disk cache: with model caching, versions come to disk only when a worker asks, within a hard bound.

Admission is where the bound is kept: before a version is moved into the disk tree, the least recently used
version that no worker holds in memory is removed, so the tree never holds more than `capacity` versions.
Concurrent requests for one version share one download; different versions download in parallel.
"""

from __future__ import annotations

import logging
import threading
import time

from supervisor.watcher import DiskFull, Watcher

log = logging.getLogger(__name__)


class DiskCache:
    def __init__(self, watcher: Watcher, capacity: int):
        self.watcher = watcher
        self.capacity = capacity
        self.last_used: dict[tuple[str, int], float] = {}
        self.resident: set[tuple[str, int]] = set()  # what the worker holds or is loading, as last reported
        self._inflight: dict[tuple[str, int], threading.Event] = {}
        self._lock = threading.Lock()
        self._report: tuple[int, int] | None = None  # (worker pid, sequence) of the snapshot `resident` came from
        watcher.before_install = self._make_room

    def trim(self) -> None:
        """Bring what a previous run left on disk within the bound (the bound may have shrunk)."""
        with self.watcher.lock:
            installed = [(n, v) for n, vs in self.watcher.installed.items() for v in vs]
            for name, version in installed[self.capacity:]:
                self._evict((name, version), "over the disk cache size after a restart")

    def _evict(self, victim: tuple[str, int], why: str) -> None:
        self.watcher.tree.remove(*victim)
        del self.watcher.installed[victim[0]][victim[1]]
        if not self.watcher.installed[victim[0]]:
            del self.watcher.installed[victim[0]]
        self.watcher.disk_evictions += 1
        log.info("model %s version %s evicted from disk (%s)", victim[0], victim[1], why)

    def _newer(self, report) -> bool:
        """Whether a worker's snapshot is newer than the one `resident` holds (caller holds the lock)."""
        if report is None:
            return True
        pid, seq = int(report[0]), int(report[1])
        if self._report is not None and self._report[0] == pid and seq <= self._report[1]:
            return False  # an older snapshot that arrived late: it may miss versions reserved since
        self._report = (pid, seq)
        return True

    def fetch(self, name: str, version: int, resident: list[tuple[str, int]], report=None) -> str | None:
        """Make a version present on disk; return why it could not be, or None."""
        key = (name, version)
        while True:
            with self._lock:
                if self._newer(report):
                    self.resident = {(n, int(v)) for n, v in resident}
                self.resident.add(key)
                self.last_used[key] = time.time()
                event = self._inflight.get(key)
                if event is None:
                    event = self._inflight[key] = threading.Event()
                    break  # this request fetches it
            event.wait()  # another request is fetching it: share that download
            with self.watcher.lock:
                if self.watcher.installed.get(name, {}).get(version):
                    return None
            if key in self.watcher.version_errors:
                return self._error(key)
            # Installed and already evicted again, or the disk was full: try again rather than report a failure.
        try:
            return self.watcher.fetch_version(name, version)
        finally:
            with self._lock:
                del self._inflight[key]
            event.set()

    def _error(self, key: tuple[str, int]) -> str:
        return self.watcher.version_errors.get(key) or "the download failed"

    def _make_room(self, name: str, version: int) -> None:
        """Called under the watcher's lock just before a new version is installed."""
        installed = [(n, v) for n, vs in self.watcher.installed.items() for v in vs]
        while len(installed) >= self.capacity:
            with self._lock:
                busy = self.resident | set(self._inflight)
            idle = [k for k in installed if k not in busy]
            if not idle:
                raise DiskFull(f"the disk cache is full ({self.capacity} versions, all in use)")
            victim = min(idle, key=lambda k: self.last_used.get(k, 0.0))
            self._evict(victim, f"least recently used; making room for {name} version {version}")
            installed.remove(victim)
