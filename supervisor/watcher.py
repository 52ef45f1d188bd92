"""The watcher: reconcile the disk tree with the catalogue, once at start and then every poll.

One pass: refresh the catalogue (one listing per root), download every valid version whose fingerprint
differs from the copy on disk, remove what upstream really removed, and publish the result in the state feed
(replica.feed) for the workers. Every pass is guarded: an error is logged and retried with backoff, and never
removes anything.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from replica.disktree import DiskTree, make_dirs, safe_relpath
from replica.feed import FeedWriter
from replica.layout import ObjectInfo, VersionListing
from supervisor.catalogue import Catalogue, CatalogueEntry
from supervisor.feed_publisher import FeedPublisher
from supervisor.tree_writes import DiskFull, TreeWrites
from supervisor.upstream import ChangedDuringDownload, LocalDiskError, Stopped, UpstreamError

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0  # seconds; an outage is retried at least this often, so changes show soon after
MAX_DOWNLOAD_BACKOFF = 600.0  # a version that keeps failing to download is tried again at least this often


def download_retry_delay(failures: int, poll_interval: float) -> float:
    """Seconds before the next try of a version whose download failed `failures` times in a row: every poll
    would download the same bytes again (all the egress of a large model, each time) to fail the same way."""
    return min(MAX_DOWNLOAD_BACKOFF, poll_interval * 2.0 ** max(0, failures - 1))


class Watcher(TreeWrites, FeedPublisher):
    def __init__(self, tree: DiskTree, catalogue: Catalogue, poll_interval: float = 10.0, download_threads: int = 8,
                 prefetch: bool = True):
        """`prefetch=False` (model caching) keeps the catalogue and refreshes what is on disk, but downloads
        new versions only when `fetch_version` asks for them."""
        self.tree = tree
        self.prefetch = prefetch
        # Guards `installed` and `_installing`, and is held only for bookkeeping: never across a file lock, a download
        # or a delete, so a worker's slow load of one version delays no other fetch, publish or heartbeat.
        self.lock = threading.RLock()
        # The disk cache's admission: (name, version, on disk, installing) -> the versions that must leave first.
        self.make_room: Callable[[str, int, list, set], list] | None = None
        # Being installed: they count against the bound and cannot be chosen. A version being removed no longer
        # counts: the install that chose it waits for its removal before it installs.
        self._installing: set[tuple[str, int]] = set()
        self.catalogue = catalogue
        self.poll_interval = poll_interval
        self.download_threads = download_threads
        self.installed: dict[str, dict[int, str]] = {}  # name -> version -> fingerprint on disk
        self.version_errors: dict[tuple[str, int], str] = {}  # download/install problems, by version
        self.ready = False
        self.failures = 0  # consecutive passes with an error, for the backoff
        self.last_pass: float | None = None
        self.bytes_downloaded = 0
        self.disk_evictions = 0  # versions the disk cache removed to make room
        self.poll_seconds: float | None = None  # how long the last pass took
        self._retry_soon = False
        self._had_disk_copies = False
        self.control_socket: str | None = None  # where workers ask for versions (model caching)
        self._publish_timer: threading.Timer | None = None
        self._publish_timer_lock = threading.Lock()
        self.stop_event = threading.Event()  # set when the replica stops: downloads end at their next chunk
        # (name, version) -> (fingerprint, failures in a row, when to try again): a changed version is tried at once
        self._download_failures: dict[tuple[str, int], tuple[str, int, float]] = {}
        self._last_touch = 0.0
        self._publish_lock = threading.Lock()
        self.feed: FeedWriter | None = None  # created at the first publish, when the runtime folder exists
        self._published: dict[str, tuple] = {}  # name -> (catalogue entry, disk copies, errors) last published
        self.versions_upstream = 0  # counted at each full publish
        self._dirty: set[str] = set()  # models whose rows changed since the last publish (publish_soon)
        self._evicted: set[str] = set()  # models a version of which left the disk outside a pass (under `lock`)

    def progress(self, nbytes: int) -> None:
        """Called per downloaded chunk and per listing page: a long download keeps the heartbeat fresh (so
        /healthz fails only for a watcher that makes no progress), and a stopping replica ends it."""
        if self.stop_event.is_set():
            raise Stopped()
        self.alive()

    def alive(self) -> None:
        """Touch the heartbeat, at most once a second."""
        now = time.monotonic()
        if now - self._last_touch >= 1.0:
            self._last_touch = now
            try:
                self.tree.touch_heartbeat()
            except OSError:
                pass

    # -- one pass ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Adopt what a previous run left on disk: versions whose fingerprint still matches are re-used."""
        self.tree.prepare()
        self.installed = self.tree.installed()
        self._had_disk_copies = any(self.installed.values())
        if self._had_disk_copies:
            count = sum(len(v) for v in self.installed.values())
            log.info("found %d model versions on disk from a previous run; re-using those that still match", count)

    def sync_once(self) -> None:
        start = time.monotonic()
        self.catalogue.refresh()
        jobs = []
        for name, entry in self.catalogue.models.items():
            if entry.listing.error:
                continue  # keep whatever is on disk: a half-done restructure must not remove anything
            for listing in entry.listing.all_versions:
                version = listing.version
                on_disk = self.installed.get(name, {}).get(version)
                if listing.error is not None or on_disk == listing.fingerprint:
                    # an old download error must not hide the current state (its layout error, or up to date)
                    self.version_errors.pop((name, version), None)
                elif (self.prefetch or on_disk) and not self._backing_off(name, listing):
                    jobs.append((name, entry, listing))
        if jobs:
            with ThreadPoolExecutor(max_workers=self.download_threads, thread_name_prefix="download") as pool:
                list(pool.map(lambda job: self._download(*job), jobs))
        if self.stop_event.is_set():
            raise Stopped()
        self._remove_gone()
        self.last_pass = time.time()
        self.poll_seconds = time.monotonic() - start
        if self.catalogue.complete or self._had_disk_copies:
            if not self.ready:
                log.info("first sync done: %d models, %d versions on disk", len(self.installed),
                         sum(len(v) for v in self.installed.values()))
            self.ready = True
        self.publish()

    def _backing_off(self, name: str, listing: VersionListing) -> bool:
        failed = self._download_failures.get((name, listing.version))
        return failed is not None and failed[0] == listing.fingerprint and time.time() < failed[2]

    def _download_failed(self, name: str, listing: VersionListing) -> float:
        """Count a failed download of this fingerprint; return the seconds until it is tried again."""
        prev = self._download_failures.get((name, listing.version))
        failures = prev[1] + 1 if prev is not None and prev[0] == listing.fingerprint else 1
        delay = download_retry_delay(failures, self.poll_interval)
        self._download_failures[(name, listing.version)] = (listing.fingerprint, failures, time.time() + delay)
        return delay

    def fetch_version(self, name: str, version: int) -> str | None:
        """Download one catalogued version now (for the disk cache); return why not, or None when on disk."""
        entry = self.catalogue.models.get(name)
        listing = entry.listing.versions.get(version) if entry else None
        if listing is None:
            return f"model '{name}' version {version} is not upstream"
        if listing.error:
            return listing.error
        with self.lock:  # not while the disk cache is evicting it: then it is downloaded again
            if self.installed.get(name, {}).get(version) == listing.fingerprint:
                return None
        error = self._download(name, entry, listing)
        self.publish_soon(name)  # the disk changed (or the version has an error): /v1/models shows it shortly
        return error

    def _download(self, name: str, entry: CatalogueEntry, listing: VersionListing) -> str | None:
        """Fetch a version into a staging folder, then install it; return the error, or None on success."""
        version = listing.version
        staging = self.tree.new_staging_dir(name, version)
        try:
            total = 0
            for f in listing.files:
                dest = staging / safe_relpath(f.key)
                make_dirs(dest.parent)
                total += entry.upstream.fetch(_prefixed(entry.prefix + listing.prefix, f), dest, self.progress)
                if dest.stat().st_size != f.size:
                    raise ChangedDuringDownload(f.key)
            manifest = {
                "name": name,
                "version": version,
                "fingerprint": listing.fingerprint,
                "source": entry.upstream.url.rstrip("/") + "/" + entry.prefix + listing.prefix,  # local urls lack the "/"
                "files": [[f.key, f.size, f.tag] for f in listing.files],
                "installed_at": time.time(),
            }
            replaced = self._install(staging, name, version, manifest)
            with self.lock:
                self._download_failures.pop((name, version), None)
                self.bytes_downloaded += total
            log.info("model %s version %s %s (%d files, %d bytes)", name, version,
                     "updated" if replaced else "downloaded", len(listing.files), total)
            return None
        except ChangedDuringDownload as e:
            error = f"changed upstream during download ({e}); fetching again"
            log.info("model %s version %s changed upstream during download (%s); fetching it again", name, version, e)
            self._retry_soon = True
        except DiskFull:
            raise  # a saturated cache is not a property of the version: the caller answers for it
        except Stopped:
            return "the replica is stopping"
        except LocalDiskError as e:
            error = f"download failed: {e}"
            log.error("model %s version %s: %s; trying again in %.0fs", name, version, error,
                      self._download_failed(name, listing))
        except UpstreamError as e:
            error = f"download failed: {e}"
            log.warning("model %s version %s: download failed: %s; trying again in %.0fs", name, version, e,
                        self._download_failed(name, listing))
        except Exception as e:
            error = f"download failed: {type(e).__name__}: {e}"
            log.exception("model %s version %s: download failed; trying again in %.0fs", name, version,
                          self._download_failed(name, listing))
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        self.version_errors[(name, version)] = error
        return error

    def _remove_gone(self) -> None:
        """Remove versions that upstream really removed, never on a listing error or an invalid layout."""
        gone = []
        with self.lock:
            for name in list(self.installed):
                entry = self.catalogue.models.get(name)
                if entry is None:
                    if not self.catalogue.complete:
                        continue  # an unlisted root might still hold it
                    versions = list(self.installed[name])
                elif entry.listing.error or entry.upstream.url in self.catalogue.root_errors:
                    continue
                else:
                    versions = [v for v in self.installed[name] if v not in entry.listing.versions]
                for version in versions:
                    self.version_errors.pop((name, version), None)
                    gone.append((name, version))
        self._remove(gone, lambda name, version: log.info("model %s version %s removed (gone upstream)", name, version))

    # -- the loop -----------------------------------------------------------------------------------------
    def next_delay(self) -> float:
        if self._retry_soon:
            self._retry_soon = False
            return min(1.0, self.poll_interval)
        if self.failures:
            return min(MAX_BACKOFF, self.poll_interval * 2 ** min(self.failures, 8)) * random.uniform(0.8, 1.0)
        return self.poll_interval * random.uniform(0.9, 1.1)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set. Nothing escapes this loop: a dead watcher would silently freeze models."""
        self.stop_event = stop
        while not stop.is_set():
            try:
                self.sync_once()
                self.failures = 0 if self.catalogue.complete else self.failures + 1
            except Stopped:
                return
            except Exception:
                self.failures += 1
                log.exception("watcher pass failed; retrying with backoff")
                try:
                    self.tree.touch_heartbeat()
                except OSError:
                    pass
            self._wait(stop, self.next_delay())

    def _wait(self, stop: threading.Event, delay: float) -> None:
        """Sleep until the next pass, touching the heartbeat at least every poll interval (5 s at most): a
        backoff of up to MAX_BACKOFF during an upstream outage must not make /healthz call the replica dead."""
        end = time.monotonic() + delay
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            if stop.wait(min(left, self.poll_interval, 5.0)):
                return
            try:
                self.tree.touch_heartbeat()
            except OSError:
                pass


def _prefixed(prefix: str, f: ObjectInfo) -> ObjectInfo:
    """A version file's key relative to the upstream root, as the upstream fetches it."""
    return ObjectInfo(prefix + f.key, f.size, f.tag)
