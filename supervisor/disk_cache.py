"""The disk cache: with model caching, versions come to disk only when a worker asks, within a hard bound.

Workers say which versions they need with two idempotent calls (supervisor/control.py): `ensure` (put it on
disk and hold it for me) and `release` (I no longer need it; a request last used it at this time). Each
carries the worker's sequence number, and only the highest one per worker and version counts, so calls that
arrive out of order cannot undo a newer decision. Admission uses the same policy as the memory tier
(replica/cache_policy.py): before a version is installed, the least recently *requested* versions that no
worker holds are chosen to leave, so the tree never holds more than `capacity` versions. Concurrent requests
for one version share one download; different versions download in parallel.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import psutil

from replica.cache_policy import Slot, victims
from replica.protocol import LoadFailure
from supervisor.tree_writes import DiskFull
from supervisor.versions import State, retry_in
from supervisor.warm_set import WarmSet
from supervisor.watcher import Fetched, Watcher

log = logging.getLogger(__name__)

Key = tuple[str, int]


class DiskCache:
    def __init__(self, watcher: Watcher, capacity: int, warm: WarmSet | None = None):
        self.watcher = watcher
        self.capacity = capacity
        self.last_used: dict[Key, float] = {}  # last request, as workers report it (wall clock)
        self._holds: dict[Key, dict[int, tuple[int, bool]]] = {}  # key -> pid -> (latest seq, held)
        self._inflight: dict[Key, threading.Event] = {}
        self._displaced: dict[Key, list[Key]] = {}  # evicted to make room for a version: theirs if it breaks
        self._lock = threading.Lock()
        watcher.make_room = self._make_room
        self.warm = warm  # where what the workers hold is written down, for the next start

    def warm_start(self) -> list[Key]:
        """The versions in memory when the last run stopped that are still on disk, most recent first, for the
        workers to load again right after they are ready (supervisor/warm_set.py)."""
        if self.warm is None:
            return []
        with self.watcher.lock:
            installed = {(n, v) for n, vs in self.watcher.installed.items() for v in vs}
        return [k for k in self.warm.previous() if k in installed][:self.capacity]

    def _held_now(self) -> None:
        """Write down what the workers hold (the lock held), most recently used first."""
        if self.warm is None:
            return
        held = [k for k, holders in self._holds.items() if any(h for _, h in holders.values())]
        self.warm.record(sorted(held, key=lambda k: self.last_used.get(k, 0.0), reverse=True))

    def trim(self) -> None:
        """Bring what a previous run left on disk within the bound (the bound may have shrunk)."""
        with self.watcher.lock:
            installed = [(n, v) for n, vs in self.watcher.installed.items() for v in vs]
        for key in installed[self.capacity:]:
            self.watcher.evict([key], "over the disk cache size after a restart")

    # -- the workers' calls ------------------------------------------------------------------------------------
    def _record(self, pid: int, key: Key, seq: int, held: bool) -> bool:
        """Apply a worker's call unless a newer one of that worker for that version came first (lock held)."""
        holders = self._holds.setdefault(key, {})
        if pid in holders and holders[pid][0] > seq:
            return False
        holders[pid] = (seq, held)
        return True

    def ensure(self, pid: int, name: str, version: int, seq: int) -> Fetched:
        """Make a version present on disk and hold it for worker `pid`: None when it is, else why not (and
        when a failed fetch is tried again)."""
        key = (name, version)
        with self._lock:
            if self._record(pid, key, seq, True):
                self._held_now()
            self.last_used[key] = time.time()
        while True:
            with self._lock:
                event = self._inflight.get(key)
                owner = event is None
                if owner:
                    event = self._inflight[key] = threading.Event()
            if owner:
                break
            event.wait()  # another request is fetching it: share that download
            with self.watcher.lock:
                if self.watcher.installed.get(name, {}).get(version):
                    return Fetched(None)
                failed = self.watcher.versions.get(key)
                if failed is not None and failed.state is State.FAILED:
                    return Fetched(failed.error, retry_in(failed, time.time()))
            # Installed and already evicted again, or the disk was full: try again rather than report a failure.
        try:
            return self.watcher.fetch_version(name, version)
        finally:
            with self._lock:
                del self._inflight[key]
            event.set()

    def release(self, pid: int, name: str, version: int, seq: int, last_used: float,
                broken: LoadFailure | None = None) -> None:
        """Worker `pid` no longer needs the version; it may leave the disk, least recently used first. A copy
        that failed to load (`broken`) is FAILED in the version's record (so every request learns why and
        when it is tried again, and a new upload clears it), leaves the disk at once, and what was evicted for
        it comes back: a broken model never costs a healthy one its disk slot."""
        key = (name, version)
        with self._lock:
            if not self._record(pid, key, seq, False):
                return
            self.last_used[key] = max(self.last_used.get(key, 0.0), last_used)
            self._held_now()
            if broken is None or self.held(key) or key in self._inflight:
                return
            displaced = self._displaced.pop(key, [])
        damaged = None
        with self.watcher.lock:
            present = version in self.watcher.installed.get(name, {})
        if present:
            with self.watcher.tree.read_lock(name, version):
                damaged = self.watcher.tree.damaged(name, version)
        if damaged is not None:  # not the model's fault: fetched again at its next request, keeping its slot
            log.warning("model %s version %s on disk is damaged (%s); fetching it again", name, version, damaged)
            with self._lock:
                self._displaced[key] = displaced
            with self.watcher.lock:
                rec = self.watcher.versions.get(key)
                if rec is not None and rec.state is State.ON_DISK:  # due at once: the next request fetches it
                    self.watcher.versions.fail(key, rec.disk, "the copy on disk was damaged; fetching it again",
                                               time.time(), 0.0, retry_after=0.0)
            self.watcher.evict([key], "damaged on disk")
            self.watcher.publish_soon(name)
            return
        with self.watcher.lock:
            rec = self.watcher.versions.get(key)
            failed = rec is not None and rec.state is State.ON_DISK
            if failed:
                self.watcher.versions.fail(key, rec.disk, f"failed to load: {broken.error}", time.time(),
                                           broken.retry_after, retry_after=broken.retry_after)
        if failed:
            self.watcher.evict([key], "it failed to load")
            self.watcher.publish({name})  # before the answer: the worker's next look finds the failure
        for heir in displaced:
            threading.Thread(target=self._restore, args=(heir, key), name="disk-restore", daemon=True).start()

    def _restore(self, heir: Key, broken: Key) -> None:
        """Fetch back a version evicted for one that then failed to load (if it is still upstream)."""
        try:
            fetched = self.watcher.fetch_version(*heir)
        except DiskFull:
            return  # the slot was taken meanwhile by a version a worker asked for: that one goes first
        if fetched.error is None:
            log.info("model %s version %s back on disk after %s version %s failed to load", *heir, *broken)

    def held(self, key: Key) -> bool:
        """Whether a live worker holds the version (the caller holds the lock); dead workers' holds go."""
        holders = self._holds.get(key)
        if not holders:
            return False
        for pid in [p for p in holders if not psutil.pid_exists(p)]:
            del holders[pid]
        return any(h for _, h in holders.values())

    # -- admission ------------------------------------------------------------------------------------------
    def _make_room(self, name: str, version: int, on_disk: list[Key], installing: set[Key]) -> list[Key]:
        """Called under the watcher's lock before a new version is installed: the versions that must leave.

        `on_disk` is every version installed or being installed (those in `installing`)."""
        key = (name, version)
        with self._lock:
            slots = [Slot(k, self.last_used.get(k, 0.0),
                          k not in installing and k not in self._inflight and not self.held(k)) for k in on_disk if k != key]
        choice = victims(slots, self.capacity, key)
        if choice:
            with self._lock:
                self._displaced[key] = choice
                for k in choice:
                    self._displaced.pop(k, None)  # leaving the disk: nothing to give back for it any more
        if choice is None:
            raise DiskFull(f"the disk cache is full ({self.capacity} versions, all in use: "
                           f"{', '.join(f'{n} version {v}' for n, v in sorted(s.key for s in slots))})")
        return choice
