"""Publishing the watcher's view to the state feed (replica.feed): after every pass the whole catalogue (the feed
writes only the rows that differ), and after a fetch or an eviction the rows of the models it touched.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Iterable

from replica.feed import FeedWriter, ModelRow, VersionRow

log = logging.getLogger(__name__)


class FeedPublisher:
    """The publishing half of Watcher (which provides `tree`, `lock`, `catalogue`, `installed`, `version_errors`,
    the facts it publishes, `feed`, `_dirty`, `_evicted` and the publish locks and timer)."""

    def _rows(self, names: Iterable[str], installed: dict[str, dict[int, str]],
              errors: dict[tuple[str, int], str]) -> tuple[list[ModelRow], list[VersionRow]]:
        """The feed's rows for `names`: every version known upstream or on disk, with its last error."""
        models: list[ModelRow] = []
        versions: list[VersionRow] = []
        catalogue = self.catalogue.models
        for name in names:
            entry = catalogue.get(name)
            on_disk = installed.get(name, {})
            if entry is None and not on_disk:
                continue
            listed = entry.listing.versions if entry is not None else {}
            error = entry.listing.error if entry is not None else None
            models.append((name, error + "; serving the last good copy" if error and on_disk else error))
            for version in listed.keys() | on_disk.keys():
                listing = listed.get(version)
                fp = on_disk.get(version)
                err = errors.get((name, version)) or (listing.error if listing is not None else None)
                if err and fp is not None:
                    err += "; serving the last good copy"
                versions.append((name, version, listing is not None, fp is not None, fp, err))
        return models, versions

    def status(self) -> dict:
        """Every model and version known upstream or on disk, with where it is and its last error, as one
        document (what the feed holds after the next publish; for tools and tests)."""
        with self.lock:
            installed = {n: dict(vs) for n, vs in self.installed.items()}
            errors = dict(self.version_errors)
        models, versions = self._rows(self.catalogue.models.keys() | installed.keys(), installed, errors)
        out: dict[str, dict] = {name: {"error": error, "versions": {}} for name, error in models}
        for name, version, upstream, disk, fp, error in versions:
            out[name]["versions"][str(version)] = {"upstream": upstream, "disk": disk, "fingerprint": fp,
                                                   "error": error}
        return out

    def publish(self, names: set[str] | None = None) -> None:
        """Write what changed to the feed: the rows of `names`, or of the whole catalogue (which also marks what
        left). Publishes take turns, and each builds its rows only once it has its turn, so a newer state is
        never overwritten by an older one; the rows are built and written outside `lock`."""
        with self._publish_lock:
            with self.lock:
                installed = {n: dict(vs) for n, vs in self.installed.items()}
                errors = dict(self.version_errors)
                facts = {
                    "ready": self.ready,
                    "caching": not self.prefetch,
                    "control_socket": self.control_socket,
                    "root_errors": dict(self.catalogue.root_errors),
                    "list_calls": self.catalogue.list_calls,
                    "last_poll": self.last_pass,
                    "last_success": self.catalogue.last_success,
                    "bytes_downloaded": self.bytes_downloaded,
                    "disk_evictions": self.disk_evictions,
                    "poll_seconds": self.poll_seconds,
                }
            complete = names is None
            if complete:
                self.versions_upstream = sum(len(e.listing.versions) for e in self.catalogue.models.values())
                names = self.catalogue.models.keys() | installed.keys()
            facts["versions_upstream"] = self.versions_upstream
            models, versions = self._rows(names, installed, errors)
            if self.feed is None:
                self.feed = FeedWriter(self.tree.feed_file)
            self.feed.publish(facts, models, versions, complete=complete)
        self.tree.touch_heartbeat()

    def publish_soon(self, name: str, delay: float = 0.25) -> None:
        """Publish the rows of `name` (and of any version evicted meanwhile) within `delay` seconds, once for
        every call made meanwhile: with model caching each fetch changes what is on disk. Workers load from
        the version's manifest, so they never wait for this write."""
        with self._publish_timer_lock:
            self._dirty.add(name)
            if self._publish_timer is None:
                self._publish_timer = threading.Timer(delay, self._publish_pending)
                self._publish_timer.daemon = True
                self._publish_timer.start()

    def _publish_pending(self) -> None:
        with self._publish_timer_lock:
            self._publish_timer = None
            names, self._dirty = self._dirty, set()
        with self.lock:
            names |= self._evicted
            self._evicted = set()
        try:
            self.publish(names)
        except (OSError, sqlite3.Error):
            log.exception("could not write the state feed; the next pass writes it again")

