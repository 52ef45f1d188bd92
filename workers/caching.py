"""Model caching in a worker: at most `cache_size` versions in memory, brought in on request, LRU by request.

A miss runs three steps, each of which can fail on its own and leaves the cache as it was:

1. admission: the shared policy (replica/cache_policy.py) names the least recently requested idle versions to
   evict; they leave service at once and are unloaded on a thread of their own while the next step runs,
   counted until they are gone; when every slot is pinned the request waits briefly, then gets 503. The slot
   comes first so that the versions held on disk for this worker never outnumber `cache_size`
   (<= `disk_cache_size`);
2. the supervisor puts the version on disk and holds it there for this worker (`ensure`), while the victims
   are unloaded;
3. the load, once the victims have left memory, so the versions in memory stay within the bounds at every
   instant and a miss costs the longer of its download and its victims' unload, not their sum.
A fetch or load that fails, for any reason (an unreachable supervisor included), is recorded on the version
(503 with Retry-After, retried with backoff), and what was evicted for it is loaded back into the free slots:
a broken model never costs a healthy one its place.

When a version leaves memory the worker `release`s it with its last request time (sent with its next `ensure`,
or by the sync loop within a tick), which is how the supervisor orders its own disk eviction by last request. Both calls carry a sequence number taken under the registry's
lock, so the supervisor applies them in the order the worker decided them, whatever order they arrive in.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from replica.cache_policy import victims
from replica.protocol import EnsureReply, LoadFailure, Release
from replica.quantity import format_bytes
from workers import metrics, model_status
from workers.errors import ModelNotFound, Unavailable
from workers.records import Record, State, memory_slots
from workers.request_pool import waiting_outside
from workers.registry import ModelRegistry
from workers.supervisor_client import SupervisorUnreachable, ensure, release

log = logging.getLogger(__name__)

FETCH_RETRY_SECONDS = 5.0  # a version that could not be fetched is tried again after this, doubling
LOADING_RETRY_SECONDS = 5  # Retry-After for a request that gave up waiting on a load still under way
# A version's memory before its first load, per byte on disk: weights are read into memory about as large as
# they are stored (numpy, ONNX initializers, TensorFlow variables), plus the framework's own structures; the
# measurement at the load replaces it for that model.
DISK_TO_MEMORY = 1.2
HOLDING = frozenset({State.FETCHING, State.LOADING, State.READY})  # the states a disk hold belongs to


class CachingRegistry(ModelRegistry):
    def __init__(self, *args, load_wait: float = 30.0, cache_memory: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.load_wait = load_wait  # how long a request waits for its version's bring-in
        self.cache_memory = cache_memory  # the byte budget of the versions in memory, or None for a count alone
        self._ratios: dict[str, float] = {}  # per model: the most memory measured over bytes on disk
        if cache_memory is not None:
            self._measure_lock = threading.Lock()
        self._hold_seq = 0
        self._unsent: dict[tuple[str, int], Release] = {}  # releases the supervisor has not heard yet
        self._admitting = threading.Semaphore(self.cache_size)  # bring-ins looking for a slot at once

    # -- a warm restart ----------------------------------------------------------------------------------------
    def _first_sync_done(self) -> None:
        """Bring back, all at once, the versions that were in memory when the replica last stopped and are
        still on disk (the supervisor's list, most recent first: supervisor/warm_set.py). Each is an ordinary
        bring-in on its own thread, so they load in parallel within the cache's bounds, and a request for one
        of them meanwhile shares its bring-in."""
        warm = [(str(n), int(v)) for n, v in self.feed.facts.get("warm") or []][:self.cache_size]
        if self.cache_memory is not None:
            warm = self._within_budget(warm)
        for name, version in warm:
            threading.Thread(target=self._warm, args=(name, version), name="cache-warm", daemon=True).start()

    def _within_budget(self, keys: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The most recent of `keys` whose estimated sizes fit the byte budget together."""
        out, total = [], 0
        for key in keys:
            manifest = self.tree.manifest(*key)
            need = int(_disk_bytes(manifest) * DISK_TO_MEMORY) if manifest else 0
            if total + need > self.cache_memory:
                break
            out.append(key)
            total += need
        return out

    def _warm(self, name: str, version: int) -> None:
        try:
            with self.request_scope():
                self.get(name, version)
            log.info("model %s version %s back in memory after the restart", name, version)
        except Exception as e:  # the version's own failure, recorded on it; requests learn it as usual
            log.warning("model %s version %s was not brought back after the restart: %s", name, version,
                        getattr(e, "description", None) or e)

    # -- sync: updated copies leave, nothing loads without a request ----------------------------------------
    def _sync_disk(self, disk: dict[str, dict[int, str]]) -> None:
        with self._cond:
            for rec in [r for vs in self._records.values() for r in vs.values() if r.state is State.READY]:
                fp = disk.get(rec.name, {}).get(rec.version)
                if fp is not None and fp != rec.fingerprint:
                    self._retire(rec, "updated upstream")  # the next request loads the new copy
        self._flush_releases()

    def _stale(self, rec: Record, version: int | None) -> bool:
        """"latest" is the highest usable version upstream, not the highest one that happens to be in memory."""
        return version is None and any(v > rec.version for v in self.feed.upstream_versions(rec.name))

    # -- a miss ------------------------------------------------------------------------------------------------
    def _miss(self, name: str, version: int | None, stale: Record | None) -> Record:
        self.refresh_state()
        model = self.feed.model(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' not found")
        upstream = self.feed.upstream_versions(name)
        target = (max(upstream) if upstream else None) if version is None else version
        if target is None or target not in upstream:
            raise ModelNotFound(model_status.not_found_reason(name, version, model))
        try:
            rec = self._bring_in(name, target)
        except (Unavailable, ModelNotFound):
            if stale is None:
                raise
            # The newer version cannot be served yet (uploading, failed, cache saturated): keep serving the
            # version this request would have had, loading it back if it was evicted meanwhile.
            return self.get(name, stale.version)
        return rec

    def _bring_in(self, name: str, version: int) -> Record:
        """Serve one version: share a bring-in already under way, or start one; pinned when it returns.

        The bring-in (admission, fetch, the predictor's `load_model`) runs on a thread of its own, and every
        request for the version, the one that started it included, waits for it at most `load_wait` seconds,
        then answers 503 with Retry-After. A `load_model` that never returns holds that one thread, never the
        request threads: the worker's other models, and its health routes, go on being served."""
        for _ in range(3):  # a version replaced or removed between its load and the pin is brought in again
            outcome: list[Exception] = []
            with self._cond:
                rec = self._current(name, version)
                if rec is not None and rec.state is State.READY:
                    self._pin(rec)
                    return rec
                if rec is not None and rec.state is State.FAILED:
                    self._fail_fast(rec)
                if rec is not None and rec.flight is not None:
                    event = rec.flight
                else:
                    rec = rec or self._put(Record(name, version, State.QUEUED))
                    rec.state = State.QUEUED
                    event = rec.flight = threading.Event()
                    threading.Thread(target=self._fly, args=(rec, event, outcome), name="cache-load",
                                     daemon=True).start()
                rec.wanted += 1  # not an eviction victim until this request has pinned it
            served = False
            try:
                with waiting_outside():  # a hit may use this request's thread meanwhile
                    done = event.wait(self.load_wait)
            finally:
                with self._cond:
                    rec.wanted -= 1
                    if rec.state is State.READY and self._current(name, version) is rec:
                        self._pin(rec)
                        served = True
            if served:
                return rec
            if not done:
                raise Unavailable(f"model '{name}' version {version} is still loading after {self.load_wait:g} s; "
                                  "try again", retry_after=LOADING_RETRY_SECONDS)
            if outcome:  # what stopped the bring-in this request started (a saturated cache, say)
                raise outcome[0]
            if rec.state is State.FAILED:  # this try (its own or the one it shared) failed: say why, once
                raise _failure(rec)
        raise Unavailable(f"model '{name}' version {version} is being replaced; try again", retry_after=1)

    def _fly(self, rec: Record, event: threading.Event, outcome: list[Exception]) -> None:
        """One bring-in, on its own thread; what stopped it goes to `outcome` for the request that started it."""
        try:
            self._admit(rec)
            self._fetch_and_load(rec)
        except Unavailable as e:
            outcome.append(e)
        except Exception as e:
            log.exception("model %s version %s could not be brought in", *rec.key)
            outcome.append(e)
        finally:
            self._land(rec, event)

    def _fail_fast(self, rec: Record) -> None:
        """A version that failed recently answers 503 at once: it is retried after its backoff, not per request."""
        now = time.time()
        info = self.feed.version_info(*rec.key)
        if rec.supervised:  # the supervisor keeps this failure: its record says when, and a new upload clears it
            if info.get("error"):
                if info.get("retry_at") is not None:
                    rec.retry_at = info["retry_at"]
                changed = False
            else:  # a row written after the failure, without it: cleared (a new upload)
                changed = info.get("seq", -1) > rec.failed_seq
        elif rec.failed_fingerprint:  # a load failure: a different copy on disk (a half-upload replaced) goes at once
            changed = info.get("fingerprint") not in (None, rec.failed_fingerprint)
        else:  # the supervisor could not be asked: the worker's own backoff
            changed = False
        if rec.retry_at <= now or changed:
            return
        raise _failure(rec)

    def _fetch_and_load(self, rec: Record) -> None:
        """Put `rec` (which holds a memory slot) on disk and load it; on any failure, hand its slot back."""
        name, version = rec.key
        loaded = False
        try:
            try:
                error, full, retry_after = self._ensure(rec)
            except SupervisorUnreachable as e:
                # A copy already on disk still loads (its read lock keeps it whole while it loads); a version that
                # is not there cannot be fetched, which is that version's failure.
                error, full, retry_after = (None if self.tree.manifest(name, version) else str(e)), False, None
            if full:  # every version on disk is held: nothing wrong with this one, so no failure is recorded
                raise Unavailable(f"the disk cache is saturated: {error}", retry_after=1)
            if error is not None:
                # The supervisor's retry time when it gave one: asking before then gets the same answer.
                self._fail(rec, error, base=FETCH_RETRY_SECONDS, retry_after=retry_after)
                log.warning("model %s version %s could not be fetched: %s", name, version, error)
            if error is None and self.cache_memory is not None:
                error = self._reserve(rec)
            self._await_unloads(rec)
            loaded = error is None and self._load_into(rec)
        finally:
            if not loaded:
                with self._cond:
                    if rec.state is not State.FAILED:  # saturated, or removed meanwhile
                        self._drop(rec)
                        self._failed(rec)
                    self._cond.notify_all()
                self._release_hold(rec)
                if rec.state is State.FAILED and rec.supervised:
                    self._flush_releases()  # before the 503: the supervisor records the failure first

    def _failed(self, rec: Record) -> None:
        """`rec` gave up its slot (the caller holds the lock): hand it back to the first version evicted for
        it, in the same step, so no other admission can take it first; that version is loaded back. Its disk
        copy is released first, so the supervisor hears of the failure before the heir's own ensure (which
        carries it) and gives the disk slot back too."""
        self._release_hold(rec)
        displaced, rec.displaced = rec.displaced, []
        for key in displaced:
            if self._current(*key) is None:
                heir = self._put(Record(*key, State.FETCHING, flight=threading.Event()))
                heir.unloads, rec.unloads = rec.unloads, []  # its load too waits for the victims to be gone
                for v in self._leaving:
                    if v.freed_for is rec:
                        v.freed_for = heir
                threading.Thread(target=self._restore, args=(heir, rec.key), name="cache-restore",
                                 daemon=True).start()
                return

    def _restore(self, heir: Record, failed: tuple[str, int]) -> None:
        event = heir.flight
        try:
            self._fetch_and_load(heir)
            if heir.state is State.READY:
                log.info("model %s version %s loaded back after %s version %s failed to load", *heir.key, *failed)
        except Exception:
            log.exception("model %s version %s could not be loaded back", *heir.key)
        finally:
            self._land(heir, event)

    def _admit(self, rec: Record) -> None:
        """Take a memory slot for `rec` (state FETCHING), evicting what the policy names, which `rec` remembers.

        At most `cache_size` bring-ins look for a slot at once (no more can hold one while they load); the
        others queue on a semaphore, which wakes one at a time, instead of all waking on every change of the
        registry's condition. Victims are unloaded outside the lock and count as UNLOADING until then; 503
        once `admission_wait` passed with every slot pinned."""
        deadline = time.monotonic() + self.admission_wait
        if not self._admitting.acquire(timeout=self.admission_wait):
            with self._cond:
                self._drop(rec)
            raise Unavailable(f"the model cache is saturated: {self.cache_size} versions are being brought in "
                              "and more are waiting", retry_after=1)
        try:
            self._take_slot(rec, deadline)
        finally:
            self._admitting.release()

    def _take_slot(self, rec: Record, deadline: float, need: int = 0, best_effort: bool = False) -> bool:
        """Evict until `rec` fits: its count slot first (admission), then, under a byte budget and once its
        size on disk is known, `need` bytes reserved for its load. Past `deadline`, 503 (the record dropped),
        or with `best_effort` False and the record left as it is."""
        evicted: list[tuple[str, int]] = []
        with self._cond:
            while True:
                records = ([r for vs in self._records.values() for r in vs.values() if r is not rec]
                           + [r for r in self._leaving if r.freed_for is not rec])  # its victims' room is its own
                choice = victims(memory_slots(records, self._inflight), self.cache_size, rec.key,
                                 self.cache_memory, need)
                if choice == []:
                    if rec.state is State.QUEUED:
                        rec.state = State.FETCHING  # the slot is taken from here on
                    rec.memory_bytes = max(rec.memory_bytes, need)
                    rec.displaced = rec.displaced + evicted
                    return True
                if choice:
                    leaving = [self._current(*key) for key in choice]
                    for v in leaving:
                        self._drop(v)
                        v.state = State.UNLOADING
                        v.freed_for = rec
                        self._leaving.append(v)
                        self._release_hold(v)  # it serves nothing more: its disk slot can go with rec's ensure
                        metrics.EVICTIONS.inc()
                        log.info("model %s version %s evicted from memory (least recently used; %s freed, making "
                                 "room for %s version %s)", v.name, v.version, format_bytes(v.memory_bytes), *rec.key)
                    # Unloaded while `rec` is fetched; its load waits for them (`_await_unloads`).
                    done = threading.Event()
                    rec.unloads.append(done)
                    threading.Thread(target=self._unload_all, args=(leaving, done), name="cache-evict",
                                     daemon=True).start()
                    evicted += choice
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 and best_effort:
                    return False
                if remaining <= 0:
                    self._drop(rec)
                    if need:
                        raise Unavailable(f"the model cache is saturated: {format_bytes(need)} for model "
                                          f"'{rec.name}' version {rec.version} cannot be freed while the versions "
                                          "in memory serve requests", retry_after=1)
                    raise Unavailable(f"the model cache is saturated: all {self.cache_size} slots are serving "
                                      "requests", retry_after=1)
                self._cond.wait(remaining)

    def evict(self, name: str) -> int:
        """Take every version of `name` out of memory now (the model repository's unload); each is unloaded
        once the requests using it have ended, and the next request brings the latest back. How many left."""
        with self._cond:
            served = [r for r in self._records.get(name, {}).values() if r.state is State.READY]
            for rec in served:
                self._retire(rec, "unloaded on request")
        self.unload_idle()
        return len(served)

    def _unload_all(self, leaving: list[Record], done: threading.Event) -> None:
        try:
            for v in leaving:
                self._unload(v)
        except Exception:
            log.exception("unloading evicted versions failed")
        finally:
            done.set()

    def _await_unloads(self, rec: Record) -> None:
        """Wait for the versions evicted for `rec` to have left memory: its load never overlaps theirs, so the
        memory they held is free before it takes any."""
        for done in rec.unloads:
            done.wait()
        rec.unloads.clear()

    # -- the byte budget ------------------------------------------------------------------------------------
    def _reserve(self, rec: Record) -> str | None:
        """Make room for the version's estimated size (evicting idle versions); the version FAILED with the
        reason when it can never fit. The estimate: its bytes on disk times the most that model took over its
        disk size at a load here, or DISK_TO_MEMORY for a model not loaded yet."""
        manifest = self.tree.manifest(*rec.key)
        if manifest is None:
            return None  # removed meanwhile: the load finds out and says so
        need = int(_disk_bytes(manifest) * self._ratios.get(rec.name, DISK_TO_MEMORY))
        if need > self.cache_memory:
            error = (f"it needs about {format_bytes(need)} in memory (estimated from its size on disk), more than "
                     f"predictor.models.cache_memory ({format_bytes(self.cache_memory)}); raise cache_memory")
            self._fail(rec, error, manifest["fingerprint"], base=FETCH_RETRY_SECONDS)
            log.warning("model %s version %s is not loaded: %s", *rec.key, error)
            return error
        self._take_slot(rec, time.monotonic() + self.admission_wait, need)
        return None

    def _measured(self, rec: Record, manifest: dict) -> bool:
        """Correct the estimate by the measurement: remember the model's ratio, unload a version larger than the
        whole budget (FAILED with its size), and evict idle versions while the measured total is over it."""
        if self.cache_memory is None:
            return True
        on_disk = _disk_bytes(manifest)
        if on_disk:
            # A framework that keeps an unloaded model's memory in its own allocator (TensorFlow does) serves
            # the next load from it, which then measures almost nothing: a model counts at its largest.
            known = self._ratios.get(rec.name)
            if known is not None:
                rec.memory_bytes = max(rec.memory_bytes, int(on_disk * known))
            self._ratios[rec.name] = max(rec.memory_bytes / on_disk, known or 0.0, 0.1)
        if rec.memory_bytes > self.cache_memory:
            with self._cond:
                model, rec.model = rec.model, None
                rec.state = State.LOADING  # not served: the failure below makes it FAILED, its slot given back
            self._free(model, *rec.key)
            del model
            self._fail(rec, f"it takes {format_bytes(rec.memory_bytes)} in memory (measured at its load), more than "
                            f"predictor.models.cache_memory ({format_bytes(self.cache_memory)}); raise cache_memory",
                       manifest["fingerprint"], base=FETCH_RETRY_SECONDS)
            return False
        fits = self._take_slot(rec, time.monotonic(), rec.memory_bytes, best_effort=True)  # what is idle now
        self._await_unloads(rec)  # back within the budget before the version is served
        if not fits:
            log.warning("model %s version %s measured %s: the versions in memory are over cache_memory (%s) "
                        "until the ones in use are idle", *rec.key, format_bytes(rec.memory_bytes),
                        format_bytes(self.cache_memory))
        return True

    def memory_used(self) -> int:
        """The bytes the budget counts now: the slots' sizes, as the policy sees them."""
        with self._cond:
            records = [r for vs in self._records.values() for r in vs.values()] + self._leaving
            return sum(s.size for s in memory_slots(records, self._inflight))

    # -- the supervisor's disk holds ------------------------------------------------------------------------
    def _ensure(self, rec: Record) -> EnsureReply:
        """Have the supervisor put the version on disk and keep it there.

        The releases decided since the last call travel with it, applied first: one round trip per miss, and
        the supervisor knows what left memory before it makes room."""
        with self._cond:
            self._hold_seq += 1
            seq = self._hold_seq
            self._unsent.pop(rec.key, None)
            releases, self._unsent = self._unsent, {}
        try:
            return ensure(self.feed.control_socket, rec.name, rec.version, seq, list(releases.values()))
        except SupervisorUnreachable:
            self._requeue(releases)
            raise

    def _released(self, rec: Record) -> None:
        self._release_hold(rec)

    def _release_hold(self, rec: Record) -> None:
        """Queue word to the supervisor that this worker no longer needs the disk copy, unless a newer record of
        the version still does (decided under the lock, with the sequence number that orders it). It is sent
        with the next ensure, or by the sync loop within a tick. A copy that failed to load says so: the
        supervisor then takes it off the disk at once and brings back what it evicted for it."""
        with self._cond:
            current = self._current(*rec.key)
            if current is not None and current is not rec and current.state in HOLDING:
                return  # its own ensure (sent, or to be sent with a higher sequence) keeps the disk copy
            self._hold_seq += 1
            broken = None
            if rec.state is State.FAILED and rec.failed_fingerprint:  # the copy on disk failed to load
                broken = LoadFailure(rec.error or "it failed to load", max(1.0, rec.retry_at - time.time()))
                rec.supervised = True  # the supervisor keeps the failure now: its record says when to retry
                rec.failed_seq = self.feed.seq
            self._unsent[rec.key] = Release(rec.name, rec.version, self._hold_seq, rec.last_used, broken)

    def _flush_releases(self) -> None:
        with self._cond:
            releases, self._unsent = self._unsent, {}
        if not releases:
            return
        try:
            release(self.feed.control_socket, list(releases.values()))
        except SupervisorUnreachable as e:
            log.warning("could not tell the supervisor that %d versions left memory (%s); retrying", len(releases), e)
            self._requeue(releases)

    def _requeue(self, releases: dict[tuple[str, int], Release]) -> None:
        with self._cond:
            for key, sent in releases.items():
                if key not in self._unsent or self._unsent[key].seq < sent.seq:
                    self._unsent[key] = sent


def _disk_bytes(manifest: dict) -> int:
    """A version's bytes on disk, from its manifest's file list."""
    return sum(int(f[1]) for f in manifest.get("files", []))


def _failure(rec: Record) -> Unavailable:
    """The 503 for a version whose fetch or load failed: the reason and when it is tried again."""
    wait = max(1, math.ceil(rec.retry_at - time.time()))
    return Unavailable(f"model '{rec.name}' version {rec.version} could not be loaded ({rec.error}); "
                       f"tried again in {wait} s", retry_after=wait)
