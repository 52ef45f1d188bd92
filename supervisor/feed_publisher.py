"""Publishing the watcher's view to the state feed (replica.feed): after every pass, the models whose listing,
disk copies or errors changed (and those that left); after a fetch or an eviction, the models it touched.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import TYPE_CHECKING

from replica.feed import FeedWriter, VersionRow
from replica.redact import known_places, public_message
from supervisor.versions import State

if TYPE_CHECKING:
    from supervisor.watcher import Watcher

log = logging.getLogger(__name__)

_NONE: dict = {}  # shared and never changed: a model with nothing on disk or no errors allocates nothing


class FeedPublisher:
    """Writes what a watcher knows to the state feed. It only reads the watcher (its catalogue, version table
    and facts, under the watcher's lock); what it keeps is its own: the feed, what it last published per
    model, and the models waiting for a publish."""

    def __init__(self, watcher: "Watcher"):
        self.watcher = watcher
        self.feed: FeedWriter | None = None  # created at the first publish, when the runtime folder exists
        self._published: dict[str, tuple] = {}  # name -> (catalogue entry, disk copies, errors) last published
        self.versions_upstream = 0  # counted at each full publish
        self._dirty: set[str] = set()  # models whose rows changed since the last publish (publish_soon)
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        self._lock = threading.Lock()  # publishes take turns

    def _model_rows(self, name: str, installed: dict[str, dict[int, str]],
                    errors: dict[str, dict[int, tuple[str, float]]]) -> tuple[str | None, list[VersionRow]] | None:
        """The feed's rows for one model (its error, and every version known upstream or on disk with its last
        error and, for a failed fetch, when it is tried again), or None when it is neither upstream nor on
        disk."""
        w = self.watcher
        entry = w.catalogue.models.get(name)
        on_disk = installed.get(name, _NONE)
        if entry is None and not on_disk:
            return None
        listed = entry.listing.versions if entry is not None else _NONE
        error = entry.listing.error if entry is not None else None
        errs = errors.get(name, _NONE)
        public = self._public
        versions: list[VersionRow] = []
        for version in listed.keys() | on_disk.keys():
            listing = listed.get(version)
            fp = on_disk.get(version)
            err, retry_at = errs.get(version) or (None, None)  # a failed fetch: its reason names no place
            err = public(err) if err else (public(listing.error, False) if listing is not None and listing.error
                                           else None)  # a layout's: upstream keys, the spec's paths
            if err:
                err += "; serving the last good copy" if fp is not None else ""
            versions.append((name, version, listing is not None, fp is not None, fp, err, retry_at))
        if error:
            error = public(error, False) + ("; serving the last good copy" if on_disk else "")
        return error, versions

    def _public(self, text: str, anywhere: bool = True) -> str:
        """An error as the feed carries it to clients: the log has the full text (replica/redact.py)."""
        w = self.watcher
        places = known_places(str(w.tree.root), str(w.tree.run), w.catalogue.predictor.sources)
        return public_message(text, places, anywhere)

    def status(self) -> dict:
        """Every model and version known upstream or on disk, with where it is and its last error, as one
        document (what the feed holds after the next publish; for tools and tests)."""
        w = self.watcher
        installed, errors = self._snapshot()
        out: dict[str, dict] = {}
        for name in w.catalogue.models.keys() | installed.keys():
            error, versions = self._model_rows(name, installed, errors)
            out[name] = {"error": error, "versions": {str(v): {"upstream": up, "disk": disk, "fingerprint": fp,
                                                                "error": err, "retry_at": retry_at}
                                                       for _, v, up, disk, fp, err, retry_at in versions}}
        return out

    def _snapshot(self) -> tuple[dict[str, dict[int, str]], dict[str, dict[int, tuple[str, float]]]]:
        """What is on disk and the failed fetches (reason, retry time), by model (taken under `lock`)."""
        w = self.watcher
        with w.lock:
            installed = {n: dict(vs) for n, vs in w.installed.items()}
            errors: dict[str, dict[int, tuple[str, float]]] = {}
            for rec in w.versions.in_state(State.FAILED):
                errors.setdefault(rec.name, {})[rec.version] = (rec.error or "the fetch failed", rec.retry_at)
        return installed, errors

    def publish(self, names: set[str] | None = None) -> None:
        """Write what changed to the feed: the rows of `names`, or of every model whose listing, disk copies or
        errors changed since the last publish (which also marks what left). Publishes take turns, and each
        builds its rows only once it has its turn, so a newer state is never overwritten by an older one; the
        rows are built and written outside `lock`."""
        w = self.watcher
        with self._lock:
            installed, errors = self._snapshot()
            with w.lock:
                facts = {
                    "ready": w.ready,
                    "caching": not w.prefetch,
                    "control_socket": w.control_socket,
                    "root_errors": {self._public(url): self._public(why)
                                    for url, why in w.catalogue.root_errors.items()},
                    "list_calls": w.catalogue.list_calls,
                    "last_poll": w.last_pass,
                    "last_success": w.catalogue.last_success,
                    "bytes_downloaded": w.bytes_downloaded,
                    "disk_evictions": w.writes.disk_evictions,
                    "poll_seconds": w.poll_seconds,
                    "state_dir_error": w.state_dir_error,
                    "warm": [list(k) for k in w.warm],
                }
            catalogue = w.catalogue.models
            live = None
            if names is None:
                self.versions_upstream = sum(len(e.listing.all_versions) for e in catalogue.values())
                names = live = catalogue.keys() | installed.keys()
            facts["versions_upstream"] = self.versions_upstream
            changed, sigs = {}, {}
            seen = self._published
            for name in names:
                sig = _signature(catalogue.get(name), installed.get(name, _NONE), errors.get(name, _NONE))
                if not _same(seen.get(name), sig):
                    rows = self._model_rows(name, installed, errors)
                    changed[name] = rows if rows is not None else (None, [])
                    sigs[name] = sig
            try:
                if self.feed is None:
                    self.feed = FeedWriter(w.tree.feed_file)
                self.feed.publish(facts, changed, live)
            except (OSError, sqlite3.Error):
                if w.tree.run.is_dir():
                    raise
                # The runtime folder was removed: the supervisor makes it again and republishes everything
                # (supervisor/tree_guard.py); a traceback per pass until then would say nothing more.
                log.warning("the runtime folder %s is gone; the state feed is written again once it is back",
                            w.tree.run)
                return
            # Only once written: a publish that failed (a full runtime folder) is sent again by the next one.
            seen.update(sigs)
            if live is not None:
                for name in [n for n in seen if n not in live]:
                    del seen[name]

    def reopen_feed(self) -> None:
        """Start a new feed file (the runtime folder was removed with the old one): the next publish writes every
        model again, under a new generation, so readers start over from it."""
        with self._lock:
            if self.feed is not None:
                self.feed.close()
            self.feed = None
            self._published = {}

    def publish_soon(self, name: str, delay: float = 0.25) -> None:
        """Publish the rows of `name` (and of any version evicted meanwhile) within `delay` seconds, once for
        every call made meanwhile: with model caching each fetch changes what is on disk. Workers load from
        the version's manifest, so they never wait for this write."""
        with self._timer_lock:
            self._dirty.add(name)
            if self._timer is None:
                self._timer = threading.Timer(delay, self._publish_pending)
                self._timer.daemon = True
                self._timer.start()

    def mark(self, name: str) -> None:
        """A model's rows changed outside a pass (a version left the disk): published with the next publish."""
        with self._timer_lock:
            self._dirty.add(name)

    def flush_publish(self) -> None:
        """Write what `publish_soon` has pending now rather than after its delay (for a caller that waits for
        the feed to show a download's result)."""
        with self._timer_lock:
            timer = self._timer
        if timer is not None:
            timer.cancel()
            self._publish_pending()

    def _publish_pending(self) -> None:
        with self._timer_lock:
            self._timer = None
            names, self._dirty = self._dirty, set()
        try:
            self.publish(names)
        except (OSError, sqlite3.Error):
            log.exception("could not write the state feed; the next pass writes it again")


def _signature(entry, on_disk: dict, errors: dict):
    """What a model's rows are made of: its catalogue entry (kept as the same object while its listing does not
    change; see Catalogue), its disk copies and its errors. Most models of a large catalogue have neither a
    copy nor an error: their signature is the entry alone, the least memory to remember."""
    return entry if on_disk is _NONE and errors is _NONE else (entry, on_disk, errors)


def _same(before, now) -> bool:
    """Unchanged: the same entry object, and equal disk copies and errors."""
    if before is None or type(before) is not type(now):
        return False
    if type(now) is not tuple:
        return before is now
    return before[0] is now[0] and before[1] == now[1] and before[2] == now[2]
