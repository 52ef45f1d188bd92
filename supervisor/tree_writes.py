"""How the watcher changes the disk tree: install and remove versions without holding its lock over file work.

The watcher's lock guards bookkeeping only (the version table). Installing or removing a version waits
for that version's exclusive file lock, so for any worker loading it; that wait, the rename and the delete all
happen outside the lock (touching the heartbeat every second meanwhile when the watcher loop itself waits), so a
slow load of one version delays no other version's fetch, no publish and no heartbeat.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from replica.disktree import DiskTree
from supervisor.versions import State, VersionTable

log = logging.getLogger(__name__)


class DiskFull(Exception):
    """Every version on disk is in use, so the disk cache cannot take another one now."""


class TreeWrites:
    """Installs and removals of versions on the disk tree, kept in step with the version table.

    Owned by the watcher, which hands it the tree, its bookkeeping lock and the table; `make_room` (the disk
    cache's admission) and `left` (told the model of every version that leaves the disk, for the next
    publish) are set by whoever uses it."""

    def __init__(self, tree: DiskTree, lock: threading.RLock, versions: VersionTable,
                 waiting: Callable[[], None]):
        self.tree = tree
        self.lock = lock
        self.versions = versions
        self.waiting = waiting  # called about every second while a version's exclusive lock is awaited
        # The disk cache's admission: (name, version, on disk, installing) -> the versions that must leave first.
        self.make_room: Callable[[str, int, list, set], list] | None = None
        self.left: Callable[[str], None] = lambda name: None
        self.disk_evictions = 0  # versions removed to make room

    def install(self, staging: Path, name: str, version: int, manifest: dict) -> bool:
        """Move a download into place, first evicting what the disk cache names; whether it replaced a copy.

        The bookkeeping happens under the lock; the deletes and the install (which waits for the version's
        exclusive file lock, so for any worker loading it) happen outside it."""
        key = (name, version)
        installed = self.versions.disk
        with self.lock:
            replaced = version in installed.get(name, {})
            leaving: list = []
            if not replaced and self.make_room is not None:
                installing = {r.key for r in self.versions.in_state(State.INSTALLING)}
                on_disk = {(n, v) for n, vs in installed.items() for v in vs} | installing
                leaving = self.make_room(name, version, sorted(on_disk), installing)
                self._forget(leaving)
            self.versions.transition(key, State.INSTALLING)  # counts against the bound from here on
        self.evict(leaving, f"least recently used; making room for {name} version {version}")
        self.tree.install(staging, name, version, manifest, while_waiting=self.waiting)
        with self.lock:
            self.versions.transition(key, State.ON_DISK, disk=manifest["fingerprint"])
        return replaced

    def evict(self, keys: list, why: str) -> None:
        """Remove versions from disk to make room (disk cache); they count as on disk until they are gone."""
        self.remove(keys, lambda name, version: log.info("model %s version %s evicted from disk (%s)",
                                                          name, version, why))
        with self.lock:
            self.disk_evictions += len(keys)

    def remove(self, keys: list, done: Callable[[str, int], None]) -> None:
        """Take versions off the disk index, then delete their files (each under its exclusive lock)."""
        with self.lock:
            self._forget(keys)
        for name, version in keys:
            self.tree.remove(name, version, while_waiting=self.waiting)
            done(name, version)

    def _forget(self, keys: list) -> None:
        """Take versions off the disk index (the caller holds the lock) before their files are removed."""
        for name, version in keys:
            self.left(name)  # the next publish says it left
            self.versions.forget_disk((name, version))
