"""The watcher: reconcile the disk tree with the catalogue, once at start and then every poll.

One pass: refresh the catalogue (one listing per root), start a download of every valid version whose
fingerprint differs from the copy on disk, remove what upstream really removed, and publish the result in the
state feed (replica.feed) for the workers. A pass never waits for its downloads: they run on the watcher's own
bounded pool of download threads, one per version at a time, and each publishes its model when it ends, so a
slow download delays no other model's update and no later pass. Every pass is guarded: an error is logged and
retried with backoff, and never removes anything.

The heartbeat says "the watcher loop is running": the loop touches it around each pass and every second while
it waits, never a download, so a download trickling for minutes neither keeps a stuck loop looking alive nor
makes a running one look dead.
"""

from __future__ import annotations

import logging
import collections
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

from replica.backoff import backoff
from replica.disktree import DiskTree, make_dirs, safe_relpath
from replica.feed import FeedWriter
from replica.layout import ObjectInfo, VersionListing
from supervisor import onnx_weights
from supervisor.catalogue import Catalogue, CatalogueEntry
from supervisor.feed_publisher import FeedPublisher
from supervisor.tree_writes import DiskFull, TreeWrites
from replica.single_flight import SingleFlight
from supervisor.upstream import ChangedDuringDownload, LocalDiskError, Stopped, UpstreamError, fetch_files
from supervisor.versions import Key, State, VersionTable, retry_in

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0  # seconds; an outage is retried at least this often, so changes show soon after

_NONE: dict = {}


class Fetched(NamedTuple):
    """What `fetch_version` answers: None when the version is on disk, else why not, and for a failed fetch
    the seconds until the supervisor tries it again (every poll would otherwise download the same bytes,
    all the egress of a large model, to fail the same way)."""

    error: str | None
    retry_after: int | None = None


class DownloadPool:
    """A bounded pool of daemon threads that run downloads off the watcher loop.

    Daemon threads, because a download blocked on a silent upstream must never hold up the replica's exit
    (the stall deadline ends it, the process exit ends it sooner). Threads are started on demand, up to
    `size`, and end once the queue is empty, so an idle watcher keeps no thread."""

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


class Watcher:
    def __init__(self, tree: DiskTree, catalogue: Catalogue, poll_interval: float = 10.0, download_threads: int = 8,
                 prefetch: bool = True):
        """`prefetch=False` (model caching) keeps the catalogue and refreshes what is on disk, but downloads
        new versions only when `fetch_version` asks for them."""
        self.tree = tree
        self.prefetch = prefetch
        # Guards `versions` and the counters, and is held only for bookkeeping: never across a file lock, a
        # download or a delete, so a worker's slow load of one version delays no other fetch, publish or heartbeat.
        self.lock = threading.RLock()
        # Every version with something local (a copy, a fetch under way, a failure), one record each.
        self.versions = VersionTable()
        self.writes = TreeWrites(tree, self.lock, self.versions, self._waiting)  # installs and removals
        self.publisher = FeedPublisher(self)  # the state feed, written from what this watcher knows
        self.writes.left = self.publisher.mark
        self._fetches = SingleFlight()  # one download per version at a time, shared by whoever asks
        self._pool = DownloadPool(download_threads)  # the pass's downloads, off the loop
        self._queued: set[Key] = set()  # versions handed to the pool and not ended yet (under `lock`)
        self._downloads_done = threading.Condition(self.lock)  # notified whenever `_queued` shrinks
        self._first_sync: set[Key] | None = None  # what the first complete pass started; ready once all end
        self._loop_thread: threading.Thread | None = None  # the thread running `run`, whose heartbeat it is
        self.catalogue = catalogue
        self.poll_interval = poll_interval
        self.download_threads = download_threads
        self.ready = False
        self.failures = 0  # consecutive passes with an error, for the backoff
        self.last_pass: float | None = None
        self.synced_catalogue: Catalogue | None = None  # the catalogue the last complete pass reconciled with
        self.bytes_downloaded = 0
        self.poll_seconds: float | None = None  # how long the last pass took
        self._retry_soon = False
        self._had_disk_copies = False
        self.control_socket: str | None = None  # where workers ask for versions (model caching)
        self.warm: list[Key] = []  # with model caching: what to load again at start (supervisor/warm_set.py)
        self.stop_event = threading.Event()  # set when the replica stops: downloads end at their next chunk
        self._last_touch = 0.0
        self.state_dir_error: str | None = None  # the state directory is gone or unwritable (supervisor.tree_guard)
        self._woken = threading.Event()

    # -- what others use: the disk cache's admission hook, evictions, publishing ------------------------------
    @property
    def make_room(self) -> Callable[[str, int, list, set], list] | None:
        """The disk cache's admission: (name, version, on disk, installing) -> the versions that must leave."""
        return self.writes.make_room

    @make_room.setter
    def make_room(self, policy: Callable[[str, int, list, set], list] | None) -> None:
        self.writes.make_room = policy

    def evict(self, keys: list, why: str) -> None:
        self.writes.evict(keys, why)

    @property
    def disk_evictions(self) -> int:
        return self.writes.disk_evictions

    @property
    def feed(self) -> FeedWriter | None:
        return self.publisher.feed

    def publish(self, names: set[str] | None = None) -> None:
        self.publisher.publish(names)

    def publish_soon(self, name: str) -> None:
        self.publisher.publish_soon(name)

    def flush_publish(self) -> None:
        self.publisher.flush_publish()

    def reopen_feed(self) -> None:
        self.publisher.reopen_feed()

    def status(self) -> dict:
        return self.publisher.status()

    @property
    def installed(self) -> dict[str, dict[int, str]]:
        """name -> version -> fingerprint of every copy on disk (the version table's index; read under `lock`)."""
        return self.versions.disk

    def progress(self, nbytes: int) -> None:
        """Called per downloaded chunk: a stopping replica ends the download there. It does not touch the
        heartbeat, which says that the loop runs, not that bytes arrive (see the module's docstring)."""
        if self.stop_event.is_set():
            raise Stopped()

    def alive(self) -> None:
        """Touch the heartbeat, at most once a second: called per listing page, on the loop's own thread, so a
        long listing of a large catalogue shows that the loop is running."""
        now = time.monotonic()
        if now - self._last_touch >= 1.0:
            self._last_touch = now
            self._beat()

    def _beat(self) -> None:
        try:
            self.tree.touch_heartbeat()
        except OSError:  # the runtime folder was removed; the supervisor makes it again
            pass

    def _waiting(self) -> None:
        """Called about every second while a file lock is awaited: the heartbeat is touched when the loop
        itself waits (a removal in a pass), never for a download thread's install."""
        if threading.current_thread() is self._loop_thread:
            self._beat()

    # -- one pass ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Adopt what a previous run left on disk: versions whose fingerprint still matches are re-used."""
        self.tree.prepare()
        for name, versions in self.tree.installed().items():
            for version, fingerprint in versions.items():
                why = self.tree.damaged(name, version)  # no worker runs yet: every copy is checked before use
                if why is not None:
                    log.warning("model %s version %s on disk is damaged (%s); fetching it again", name, version, why)
                    self.tree.remove(name, version)
                    continue
                with self.lock:
                    self.versions.adopt((name, version), fingerprint)
        self._had_disk_copies = any(self.installed.values())
        if self._had_disk_copies:
            count = sum(len(v) for v in self.installed.values())
            log.info("found %d model versions on disk from a previous run; re-using those that still match "
                     "and serving them now", count)
            # Ready from what is on disk: a restart while S3 hangs serves these at once instead of waiting
            # for a first listing (the watcher's first pass updates them as soon as upstream answers).
            self.ready = True

    def sync_once(self) -> None:
        """One pass: list, start the downloads it needs, remove what upstream removed, publish. It returns
        without waiting for its downloads (see `wait_for_downloads`); each publishes its model when it ends."""
        start = time.monotonic()
        # One catalogue for the whole pass, even if a reload replaces it meanwhile (the next pass takes that one).
        catalogue = self.catalogue
        catalogue.refresh()
        jobs = []
        now = time.time()
        table = self.versions
        for name, entry in catalogue.models.items():
            if entry.listing.error:
                continue  # keep whatever is on disk: a half-done restructure must not remove anything
            on_disk = self.installed.get(name, _NONE)
            for listing in entry.listing.all_versions:
                version = listing.version
                key = (name, version)
                if table.get(key) is not None:
                    with self.lock:  # a failure of another fingerprint (a new upload) or of an invalid layout goes
                        if table.clear_stale(key, None if listing.error else listing.fingerprint):
                            self.publisher.mark(name)
                if listing.error is not None or on_disk.get(version) == listing.fingerprint:
                    continue
                if (self.prefetch or version in on_disk) and table.backing_off(key, listing.fingerprint, now) is None:
                    jobs.append((name, entry, listing))
        for job in jobs:
            self._start_download(*job)
        if self.stop_event.is_set():
            raise Stopped()
        self._remove_gone(catalogue)
        self.last_pass = time.time()
        self.synced_catalogue = catalogue
        self.poll_seconds = time.monotonic() - start
        with self.lock:
            if catalogue.complete and not self.ready and self._first_sync is None:
                self._first_sync = set(self._queued)  # the first sync is on disk once these have ended
            self._check_first_sync()
        self.publish()

    def _check_first_sync(self) -> None:
        """Ready once the first complete pass's downloads have all ended (the caller holds `lock`)."""
        if self.ready or self._first_sync is None or self._first_sync:
            return
        self.ready = True
        log.info("first sync done: %d models, %d versions on disk", len(self.installed),
                 sum(len(v) for v in self.installed.values()))

    def _start_download(self, name: str, entry: CatalogueEntry, listing: VersionListing) -> None:
        """Hand a version's download to the pool, unless one of it is queued or running already (a pass, or
        a worker's `fetch_version`): one download per version at a time."""
        key = (name, listing.version)
        with self.lock:
            if key in self._queued or self._fetches.running(key) \
                    or self.versions.state(key) in (State.DOWNLOADING, State.INSTALLING):
                return
            self._queued.add(key)
        self._pool.submit(lambda: self._download_in_background(key, entry, listing))

    def _download_in_background(self, key: Key, entry: CatalogueEntry, listing: VersionListing) -> None:
        """A pool thread's job: download the version unless upstream moved on since the pass queued it (the
        next pass then decides), and publish its model when done. Nothing it raises escapes: whatever a
        download raises is that version's failure (`_fetch`), and anything else is logged here."""
        name = key[0]
        try:
            if self.stop_event.is_set():
                return
            current = self.catalogue.models.get(name)  # the pass may have been queued behind slow downloads
            now = current.listing.versions.get(key[1]) if current is not None and not current.listing.error else None
            if now is None or now.error is not None or now.fingerprint != listing.fingerprint:
                return
            self._download(name, current, now)
        except DiskFull:
            log.warning("model %s version %s: the disk cache is full of versions in use; the next pass tries "
                        "again", *key)
        except Exception:
            log.exception("model %s version %s: the download failed unexpectedly", *key)
        finally:
            with self.lock:
                self._queued.discard(key)
                if self._first_sync is not None:
                    self._first_sync.discard(key)
                    self._check_first_sync()
                self._downloads_done.notify_all()
            self.publish_soon(name)

    @property
    def downloads_in_flight(self) -> int:
        """Downloads the passes handed to the pool that have not ended yet (queued or running)."""
        with self.lock:
            return len(self._queued)

    def wait_for_downloads(self, timeout: float | None = None) -> bool:
        """Wait until no download the passes started is queued or running, then publish what they changed;
        False if some are still under way after `timeout` seconds. For tools and tests that need a pass's
        result on disk: the watcher itself never waits for its downloads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while self._queued:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._downloads_done.wait(left)
        self.flush_publish()
        return True

    def fetch_version(self, name: str, version: int) -> Fetched:
        """Have one catalogued version on disk now (for the disk cache): None when it is, else why not and,
        for a failed fetch, the seconds until it is tried again. A version whose last fetch of the same
        fingerprint failed is not fetched again before its retry time: every worker asking gets that answer."""
        entry = self.catalogue.models.get(name)
        listing = entry.listing.versions.get(version) if entry else None
        if listing is None:
            return Fetched(f"model '{name}' version {version} is not upstream")
        if listing.error:
            return Fetched(listing.error)
        key = (name, version)
        with self.lock:  # not while the disk cache is evicting it: then it is downloaded again
            if self.installed.get(name, {}).get(version) == listing.fingerprint:
                return Fetched(None)
            failed = self.versions.backing_off(key, listing.fingerprint, time.time())
            if failed is not None:
                return Fetched(failed.error, retry_in(failed, time.time()))
        error = self._download(name, entry, listing)
        if error is None:
            self.publish_soon(name)  # the disk changed: /v1/models shows it shortly (workers load from the manifest)
        else:
            self.publish({name})  # before the answer: the worker's next look at the feed finds the failure
        with self.lock:
            rec = self.versions.get(key)
            if error is not None and rec is not None and rec.state is State.FAILED:
                return Fetched(error, retry_in(rec, time.time()))
        return Fetched(error)

    def _download(self, name: str, entry: CatalogueEntry, listing: VersionListing) -> str | None:
        """Fetch a version and install it, or share the fetch of it already under way; the error, or None."""
        return self._fetches.run((name, listing.version), lambda: self._fetch(name, entry, listing))

    def _fetch(self, name: str, entry: CatalogueEntry, listing: VersionListing) -> str | None:
        """Fetch a version into a staging folder, then install it; return the error, or None on success. Any
        exception, whatever raised it, is this version's failure, never the pass's."""
        version = listing.version
        key = (name, version)
        with self.lock:
            if self.installed.get(name, {}).get(version) == listing.fingerprint:
                return None  # a fetch that ran just before this one put it there
            self.versions.transition(key, State.DOWNLOADING)
        staging = None
        try:
            staging = self.tree.new_staging_dir(name, version)
            files = []
            for f in listing.files:
                dest = staging / safe_relpath(f.key)
                make_dirs(dest.parent)
                files.append((prefixed(entry.prefix + listing.prefix, f), dest))
            written = fetch_files(entry.upstream, files, self.progress)
            total = sum(w.size for w in written)
            manifest = {
                "name": name,
                "version": version,
                "fingerprint": listing.fingerprint,
                "source": entry.upstream.url.rstrip("/") + "/" + entry.prefix + listing.prefix,  # local urls lack the "/"
                "files": self._on_disk(staging, [[f.key, f.size, f.tag, w.sha256] for f, w in zip(listing.files, written)]),
                "installed_at": time.time(),
            }
            replaced = self.writes.install(staging, name, version, manifest)
            with self.lock:
                self.bytes_downloaded += total
            log.info("model %s version %s %s (%d files, %d bytes)", name, version,
                     "updated" if replaced else "downloaded", len(listing.files), total)
            return None
        except ChangedDuringDownload as e:
            log.info("model %s version %s changed upstream during download (%s); fetching it again", name, version, e)
            self._retry_soon = True
            error = f"changed upstream during download ({e}); fetching again"
            with self.lock:  # retried at once: the next listing shows the new fingerprint, which clears it
                self.versions.fail(key, listing.fingerprint, error, time.time(), base=0.0)
            return error
        except DiskFull:
            self._at_rest(key)
            raise  # a saturated cache is not a property of the version: the caller answers for it
        except Stopped:
            self._at_rest(key)
            return "the replica is stopping"
        # What is recorded (and told to clients) is the reason; the log gets the paths and the endpoint.
        except LocalDiskError as e:
            error = f"download failed: {e.public}"
            log.error("model %s version %s: download failed: %s; trying again in %.0fs", name, version, e,
                      self._failed(key, listing, error))
        except UpstreamError as e:
            error = f"download failed: {e.public}"
            log.warning("model %s version %s: download failed: %s; trying again in %.0fs", name, version, e,
                        self._failed(key, listing, error))
        except OSError as e:  # staging or installing on the state disk (a full disk, a name it cannot hold)
            error = f"download failed: the state directory refused it ({e.strerror or type(e).__name__})"
            log.error("model %s version %s: download failed: %s; trying again in %.0fs", name, version, e,
                      self._failed(key, listing, error))
        except Exception as e:
            error = f"download failed: {type(e).__name__}"
            log.exception("model %s version %s: download failed; trying again in %.0fs", name, version,
                          self._failed(key, listing, error))
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return error

    def _on_disk(self, staging: Path, files: list[list]) -> list[list]:
        """The files a staged version installs: ONNX versions get their weights mapped (supervisor/onnx_weights.py)."""
        if self.catalogue.predictor.type != "onnx":
            return files
        return onnx_weights.installed_files(staging, files)

    def _at_rest(self, key: Key) -> None:
        with self.lock:
            self.versions.back_to_rest(key)

    def _failed(self, key: Key, listing: VersionListing, error: str) -> float:
        """Record a failed fetch of this fingerprint; return the seconds until it is tried again."""
        with self.lock:
            now = time.time()
            return self.versions.fail(key, listing.fingerprint, error, now, self.poll_interval).retry_at - now

    def _remove_gone(self, catalogue: Catalogue) -> None:
        """Remove versions that upstream really removed, never on a listing error or an invalid layout."""
        gone = []
        with self.lock:
            for name in list(self.installed):
                entry = catalogue.models.get(name)
                if entry is None:
                    if not catalogue.complete:
                        continue  # an unlisted root might still hold it
                    versions = list(self.installed[name])
                elif entry.listing.error or entry.upstream.url in catalogue.root_errors:
                    continue
                else:
                    versions = [v for v in self.installed[name] if v not in entry.listing.versions]
                gone += [(name, version) for version in versions]
            for rec in self.versions.in_state(State.FAILED):  # a failure of a version upstream no longer holds
                entry = catalogue.models.get(rec.name)
                if (entry is None and catalogue.complete) or (
                        entry is not None and not entry.listing.error and rec.version not in entry.listing.versions):
                    self.publisher.mark(rec.name)
                    self.versions.clear_stale(rec.key, None)
        self.writes.remove(gone, lambda name, version: log.info("model %s version %s removed (gone upstream)", name, version))

    # -- the loop -----------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Start the next pass now, not after the current wait (the disk tree was repaired: fetch again)."""
        self._woken.set()

    def next_delay(self) -> float:
        if self._retry_soon:
            self._retry_soon = False
            return min(1.0, self.poll_interval)
        if self.failures:
            return backoff(min(self.failures, 8) + 1, self.poll_interval, MAX_BACKOFF) * random.uniform(0.8, 1.0)
        return self.poll_interval * random.uniform(0.9, 1.1)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set. Nothing escapes this loop: a dead watcher would silently freeze models.
        The heartbeat is this loop's: touched before and after each pass and every second between them."""
        self.stop_event = stop
        self._loop_thread = threading.current_thread()
        while not stop.is_set():
            self._beat()
            try:
                self.sync_once()
                self.failures = 0 if self.catalogue.complete else self.failures + 1
            except Stopped:
                return
            except Exception:
                self.failures += 1
                log.exception("watcher pass failed; retrying with backoff")
            self._beat()
            self._wait(stop, self.next_delay())

    def _wait(self, stop: threading.Event, delay: float) -> None:
        """Sleep until the next pass, touching the heartbeat every second: neither a backoff of up to
        MAX_BACKOFF during an upstream outage nor a long download may make /healthz call the replica dead.
        A download that saw its object change meanwhile (`_retry_soon`) shortens the wait to a second."""
        end = time.monotonic() + delay
        while not stop.is_set():
            if self._retry_soon:
                self._retry_soon = False
                end = min(end, time.monotonic() + min(1.0, self.poll_interval))
            left = end - time.monotonic()
            if left <= 0 or self._woken.is_set():
                self._woken.clear()
                return
            if stop.wait(min(left, self.poll_interval, 1.0)):
                return
            self._beat()


def prefixed(prefix: str, f: ObjectInfo) -> ObjectInfo:
    """A version file's key relative to the upstream root, as the upstream fetches it."""
    return ObjectInfo(prefix + f.key, f.size, f.tag)
