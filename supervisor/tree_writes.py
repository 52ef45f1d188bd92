"""How the watcher changes the disk tree: install and remove versions without holding its lock over file work.

The watcher's lock guards bookkeeping only (`installed`, `_installing`). Installing or removing a version waits
for that version's exclusive file lock, so for any worker loading it; that wait, the rename and the delete all
happen outside the lock, touching the heartbeat every second meanwhile, so a slow load of one version delays no
other version's fetch, no publish and no heartbeat.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)


class DiskFull(Exception):
    """Every version on disk is in use, so the disk cache cannot take another one now."""


class TreeWrites:
    """The writing half of Watcher (which provides `tree`, `lock`, `installed`, `version_errors`, `make_room`,
    `_installing`, `_evicted` and `disk_evictions`)."""

    def _install(self, staging, name: str, version: int, manifest: dict) -> bool:
        """Move a download into place, first evicting what the disk cache names; whether it replaced a copy.

        The bookkeeping happens under the lock; the deletes and the install (which waits for the version's
        exclusive file lock, so for any worker loading it) happen outside it."""
        key = (name, version)
        with self.lock:
            replaced = version in self.installed.get(name, {})
            leaving: list = []
            if not replaced and self.make_room is not None:
                on_disk = {(n, v) for n, vs in self.installed.items() for v in vs} | self._installing
                leaving = self.make_room(name, version, sorted(on_disk), set(self._installing))
                self._forget(leaving)
            self._installing.add(key)
        try:
            self.evict(leaving, f"least recently used; making room for {name} version {version}")
            self.tree.install(staging, name, version, manifest, while_waiting=self.tree.touch_heartbeat)
            with self.lock:
                self.installed.setdefault(name, {})[version] = manifest["fingerprint"]
                self.version_errors.pop(key, None)
        finally:
            with self.lock:
                self._installing.discard(key)
        return replaced

    def evict(self, keys: list, why: str) -> None:
        """Remove versions from disk to make room (disk cache); they count as on disk until they are gone."""
        self._remove(keys, lambda name, version: log.info("model %s version %s evicted from disk (%s)",
                                                           name, version, why))
        with self.lock:
            self.disk_evictions += len(keys)

    def _forget(self, keys: list) -> None:
        """Take versions out of `installed` (the caller holds the lock) before their files are removed."""
        for name, version in keys:
            self._evicted.add(name)  # the next publish says it left
            self.installed.get(name, {}).pop(version, None)
            if name in self.installed and not self.installed[name]:
                del self.installed[name]

    def _remove(self, keys: list, done: Callable[[str, int], None]) -> None:
        with self.lock:
            self._forget(keys)
        for name, version in keys:
            self.tree.remove(name, version, while_waiting=self.tree.touch_heartbeat)
            done(name, version)
