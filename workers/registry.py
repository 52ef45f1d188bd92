"""The models a worker holds in memory, kept in step with the disk tree the supervisor publishes.

One `Record` per version (workers/records.py) holds its state, pins, last use and last error, all under one
lock. A background thread re-reads the supervisor's state when it changed, loads new or changed versions under
their shared file lock, swaps each in only once it has loaded, and unloads a replaced or removed copy once
nothing pins it. Every version is synced on its own: one version's failure, whatever raised it, is recorded
on that version and never stops the others.
Requests pin what they use through a `RequestScope` (workers/scope.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable

from replica import quarantine
from replica.disktree import DiskTree
from replica.layout import parse_version
from replica.quarantine import LoadMarks
from workers import memory, metrics, model_status
from workers.collector import DeferredCollector
from workers.errors import BadRequest, ModelNotFound
from workers.loading import VersionLoader
from workers.records import InFlight, Record, State, pinned
from workers.scope import CURRENT_SCOPE, RequestScope
from workers.state_feed import StateView
from workers.user_calls import Abandoned

log = logging.getLogger(__name__)


class ModelRegistry(VersionLoader):
    def __init__(self, tree: DiskTree, load: Callable[[str, str, int], Any], unload: Callable[[Any], None] | None = None,
                 single_model: str | None = None, tick: float = 0.2, cache_size: int | None = None,
                 admission_wait: float = 5.0, load_timeout: float = 600.0):
        self.tree = tree
        self.load_timeout = load_timeout
        self.abandoned = Abandoned()  # loads past their deadline, still running on their own threads
        self._measure_lock: contextlib.AbstractContextManager = contextlib.nullcontext()  # a lock under a byte budget
        self._load_fn = load  # (model_path, name, version) -> model object
        self._unload_fn = unload
        self.single_model = single_model
        self.tick = tick
        self.cache_size = cache_size
        self.admission_wait = admission_wait
        self.collector = DeferredCollector()
        self.marks = LoadMarks(tree.workers_dir)  # the loads under way, for the master if this worker dies
        self.feed = StateView(tree)
        self._cond = threading.Condition()  # the one lock over every record
        self._records: dict[str, dict[int, Record]] = {}  # the current record of each version
        self._leaving: list[Record] = []  # replaced, removed or evicted copies that still hold memory
        self._inflight = InFlight()
        self.initial_sync_done = threading.Event()

    # -- the supervisor's state ---------------------------------------------------------------------------
    def refresh_state(self) -> bool:
        return self.feed.refresh()

    @property
    def supervisor_ready(self) -> bool:
        return self.feed.ready

    # -- records (the caller holds the lock) ------------------------------------------------------------------
    def _current(self, name: str, version: int) -> Record | None:
        return self._records.get(name, {}).get(version)

    def _put(self, rec: Record) -> Record:
        self._records.setdefault(rec.name, {})[rec.version] = rec
        return rec

    def _drop(self, rec: Record) -> None:
        versions = self._records.get(rec.name, {})
        if versions.get(rec.version) is rec:
            del versions[rec.version]
            if not versions:
                del self._records[rec.name]

    def _retire(self, rec: Record, why: str) -> None:
        """Take a served copy out of service; it is unloaded once nothing pins it."""
        self._drop(rec)
        rec.state = State.DRAINING
        self._leaving.append(rec)
        log.info("model %s version %s %s; unloading once idle", rec.name, rec.version, why)

    def _pin(self, rec: Record) -> None:
        scope = CURRENT_SCOPE.get()
        if scope is not None and scope.registry is self and not scope.closed:
            rec.refs += 1
            scope.pinned.append(rec)
        else:
            rec.hold_until = self._inflight.latest
            rec.last_used = time.time()

    def _count_memory(self) -> None:
        held = sum(1 for vs in self._records.values() for r in vs.values() if r.state is State.READY)
        metrics.IN_MEMORY.set(held + len(self._leaving))

    # -- the sync loop ---------------------------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._run, name="model-sync", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self.sync()
                if self.supervisor_ready and not self.initial_sync_done.is_set():
                    self.initial_sync_done.set()
                    self._first_sync_done()
            except Exception:
                log.exception("model sync failed; retrying")
            time.sleep(self.tick)

    def _first_sync_done(self) -> None:
        """Called once, when the worker has become ready (the caching registry warms up here)."""

    def sync(self) -> None:
        """Load what is new on disk, retire what left it, unload retired copies nobody pins any more."""
        self.refresh_state()
        disk = self.feed.on_disk()
        self._sync_disk(disk)
        with self._cond:
            for rec in [r for vs in self._records.values() for r in vs.values() if r.state is State.READY]:
                # `disk` can predate a version a request loaded meanwhile: check the tree itself (the supervisor
                # deletes a version before it publishes that it is gone).
                if rec.version not in disk.get(rec.name, {}) and self._guarded(self.tree.manifest, *rec.key) is None:
                    self._retire(rec, "removed")
        self.unload_idle()

    def _sync_disk(self, disk: dict[str, dict[int, str]]) -> None:
        """Load every version on disk that is not served as that copy, unless it failed and waits to retry."""
        now = time.time()
        for name, versions in disk.items():
            for version, fp in sorted(versions.items(), reverse=True):  # newest first: "latest" moves sooner
                with self._cond:
                    rec = self._current(name, version)
                    if rec is not None and rec.state is State.READY and rec.fingerprint == fp:
                        continue
                    if rec is not None and rec.error and rec.failed_fingerprint == fp and rec.retry_at > now:
                        continue
                self._guarded(self.load, name, version)
        with self._cond:
            for rec in [r for vs in self._records.values() for r in vs.values() if r.state is State.FAILED]:
                if rec.version not in disk.get(rec.name, {}):
                    self._drop(rec)  # off disk: nothing to retry until it comes back

    @staticmethod
    def _guarded(fn, *args):
        """Run one version's step; log what it raised instead of stopping the pass over the others."""
        try:
            return fn(*args)
        except Exception:
            log.exception("model %s version %s: %s failed; the other versions go on", *args[:2], fn.__name__)
            return None

    def unload_idle(self) -> None:
        with self._cond:
            idle = [r for r in self._leaving if r.state is State.DRAINING and not pinned(r, self._inflight)]
            for rec in idle:
                rec.state = State.UNLOADING
        for rec in idle:
            self._unload(rec)

    def _unload(self, rec: Record) -> None:
        """Release a copy's memory (outside the lock); it counts until then. What the model held in reference
        cycles goes with the next batched full collection (workers/collector.py), off this thread."""
        model, rec.model = rec.model, None
        self._free(model, rec.name, rec.version)
        del model
        self._released(rec)  # before its slot frees: nothing held elsewhere for it outlives the slot
        with self._cond:
            self._leaving.remove(rec)
            self._count_memory()
            self._cond.notify_all()
        log.info("model %s version %s unloaded", rec.name, rec.version)

    def _free(self, model: Any, name: str, version: int) -> None:
        """Run the unload hook on a model nothing serves any more, and give its memory back: what reference
        counting frees goes back to the system at once (malloc_trim), what cycles hold after the next batched
        collection."""
        if self._unload_fn is not None:
            try:
                self._unload_fn(model)
            except Exception:
                log.exception("unload hook failed for model %s version %s", name, version)
        del model
        memory.give_back()
        self.collector.request()

    def _released(self, rec: Record) -> None:
        """A copy left memory (the caching registry tells the supervisor)."""

    # -- requests --------------------------------------------------------------------------------------------
    def resolve_name(self, model_name: str | None) -> str:
        if model_name is None:
            if self.single_model is not None:
                return self.single_model
            names = sorted(self.feed.models)
            raise BadRequest(f"model_name is required: this API serves {len(names)} models ({', '.join(names[:10])})")
        if not isinstance(model_name, str):
            raise BadRequest(f"model_name must be a string, got {type(model_name).__name__}")
        return model_name

    def request_scope(self) -> RequestScope:
        """Pin every version a request touches until it ends; the scope says which versions those were."""
        return RequestScope(self)

    def get(self, model_name: str | None, model_version: Any = "latest") -> Record:
        """The served copy a request asked for, pinned until the request has ended (see the module's doc)."""
        name = self.resolve_name(model_name)
        try:
            version = parse_version(model_version)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        with self._cond:
            rec = self._find(name, version)
            if rec is not None and not self._stale(rec, version):
                self._pin(rec)
                metrics.CACHE_HITS.inc()
                return rec
        metrics.CACHE_MISSES.inc()
        return self._miss(name, version, rec)

    def _find(self, name: str, version: int | None) -> Record | None:
        """The served copy to use (the caller holds the lock); "latest" is the highest served version."""
        versions = self._records.get(name)
        if not versions:
            return None
        if version is not None:
            rec = versions.get(version)
            return rec if rec is not None and rec.state is State.READY else None
        ready = [v for v, r in versions.items() if r.state is State.READY]
        return versions[max(ready)] if ready else None

    def _stale(self, rec: Record, version: int | None) -> bool:
        """Whether "latest" should move past `rec` (only with caching, where newer versions load on request)."""
        return False

    def _miss(self, name: str, version: int | None, stale: Record | None) -> Record:
        """A version on disk that this worker has not loaded yet (it just arrived): load it now."""
        self.refresh_state()
        model = self.feed.model(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' not found")
        on_disk = self.feed.on_disk().get(name, {})
        target = (max(on_disk) if on_disk else None) if version is None else version
        if target is None or target not in on_disk:
            raise ModelNotFound(model_status.not_found_reason(name, version, model))
        with self._cond:
            rec = self._current(name, target)
            recent = (rec is not None and rec.error is not None and rec.failed_fingerprint == on_disk[target]
                      and rec.retry_at > time.time())
        served = None if recent else self.load(name, target)  # a copy that just failed is not loaded per request
        with self._cond:
            if served is not None and served.state is State.READY:
                self._pin(served)
                return served
            rec = self._current(name, target)
        reason = f": {rec.error}" if rec is not None and rec.error else ""
        raise ModelNotFound(f"model '{name}' version {target} is not available{reason}")

    # -- status ----------------------------------------------------------------------------------------------
    def status(self, name: str | None = None) -> list[dict]:
        """TF Serving's model_version_status per model, plus where each version is and its last error."""
        self.refresh_state()
        models = self.feed.models
        with self._cond:  # copies only: the rendering runs outside the lock
            if name is None:
                records = {n: dict(vs) for n, vs in self._records.items()}
            else:
                records = {name: dict(self._records.get(name, {}))}
            leaving = list(self._leaving)
        names = sorted(set(models) | set(records)) if name is None else [name]
        return model_status.render(models, names, records, leaving, quarantine.held(self.tree.workers_dir, time.time()))

    def memory_sizes(self) -> list[tuple[str, int, int]]:
        """(name, version, bytes) of every version served from memory, measured at its load."""
        with self._cond:
            return [(r.name, r.version, r.memory_bytes) for vs in self._records.values() for r in vs.values()
                    if r.state is State.READY]

    def known(self, name: str) -> bool:
        return name in self.feed.models or name in self._records

