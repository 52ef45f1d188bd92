"""The models a worker holds in memory, kept in step with the disk tree the supervisor publishes.

A background thread stats `state.json` (one cheap `stat` per tick, no upstream or directory scans), loads new
or changed versions under their shared lock, and swaps each in only once it has loaded. Requests pin the
version they use for their whole duration: a replaced or removed version is unloaded only once its last
request has finished, so no request fails because of a reload.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from replica.disktree import DiskTree
from replica.layout import parse_version
from workers import metrics
from workers.errors import BadRequest, ModelNotFound, Unavailable

log = logging.getLogger(__name__)

LOAD_RETRY_SECONDS = 30.0
LOAD_RETRY_SECONDS_HINT = 5
FETCH_RETRY_SECONDS = 5.0


@dataclass(eq=False)
class LoadedVersion:
    name: str
    version: int
    fingerprint: str
    model: Any
    load_seconds: float
    refs: int = 0
    retired: bool = False


@dataclass
class LoadFailure:
    fingerprint: str
    error: str
    retry_at: float


class _Scope:
    """The versions one request has pinned; a context manager that unpins them when the request ends.

    A plain class rather than a generator-based context manager: it runs on every request."""

    __slots__ = ("registry", "pinned")

    def __init__(self, registry: "ModelRegistry"):
        self.registry = registry
        self.pinned: list[LoadedVersion] = []

    def __enter__(self) -> "_Scope":
        self.registry._scope.current = self
        return self

    def __exit__(self, *exc) -> None:
        registry = self.registry
        registry._scope.current = None
        if not self.pinned and registry.cache_size is None:
            return
        now = time.monotonic()
        with registry._cond:
            for lv in self.pinned:
                lv.refs -= 1
                registry._last_used[(lv.name, lv.version)] = now
            if registry.cache_size is not None:
                registry._cond.notify_all()


class ModelRegistry:
    def __init__(
        self,
        tree: DiskTree,
        load: Callable[[str, str, int], Any],
        unload: Callable[[Any], None] | None = None,
        single_model: str | None = None,
        tick: float = 0.2,
        cache_size: int | None = None,
        admission_wait: float = 5.0,
    ):
        self.tree = tree
        self._load_fn = load  # (model_path, name, version) -> model object
        self._unload_fn = unload
        self.single_model = single_model
        self.tick = tick
        self._cond = threading.Condition()
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._retired: list[LoadedVersion] = []
        self._loading: dict[tuple[str, int], threading.Event] = {}
        self._failures: dict[tuple[str, int], LoadFailure] = {}
        self._state: dict = {}
        self._state_key: tuple | None = None
        self._scope = threading.local()
        self.initial_sync_done = threading.Event()
        self._thread: threading.Thread | None = None
        # Model caching: at most `cache_size` versions in memory (loaded, loading or draining), LRU by request.
        self.cache_size = cache_size
        self.admission_wait = admission_wait
        # Memory slots taken by versions being fetched and loaded, with how many requests share each: a reserved
        # version counts against cache_size before it is loaded, is reported to the supervisor as in use (kept on
        # disk), and is never an eviction victim.
        self._reserved: dict[tuple[str, int], int] = {}
        # Versions requests are bringing in, up to their pin (which comes after the reservation is released): a
        # loaded one is never an eviction victim meanwhile.
        self._wanted: dict[tuple[str, int], int] = {}
        self._unloading: list[LoadedVersion] = []  # evicted, memory not yet released: still counts
        self._last_used: dict[tuple[str, int], float] = {}
        self._report_seq = 0

    # -- state from the supervisor ------------------------------------------------------------------------
    def refresh_state(self) -> bool:
        """Re-read state.json when it changed; return whether it did."""
        try:
            st = self.tree.state_file.stat()
        except FileNotFoundError:
            return False
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._state_key:
            return False
        state = self.tree.read_state()
        if state is None:
            return False
        self._state_key = key
        self._state = state
        return True

    @property
    def supervisor_ready(self) -> bool:
        return bool(self._state.get("ready"))

    def _disk_versions(self) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        for name, m in self._state.get("models", {}).items():
            for v, info in m.get("versions", {}).items():
                if info.get("disk") and info.get("fingerprint"):
                    out.setdefault(name, {})[int(v)] = info["fingerprint"]
        return out

    # -- the sync loop ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.sync()
                if self.supervisor_ready and not self.initial_sync_done.is_set():
                    self.initial_sync_done.set()
            except Exception:
                log.exception("model sync failed; retrying")
            time.sleep(self.tick)

    def sync(self) -> None:
        """Load what is new on disk, retire what left it, unload retired versions nobody uses any more."""
        self.refresh_state()
        disk = self._disk_versions()
        now = time.time()
        for name, versions in disk.items():
            for version, fp in sorted(versions.items(), reverse=True):  # newest first: "latest" moves sooner
                current = self._loaded.get(name, {}).get(version)
                if self.cache_size is not None:
                    if current is not None and current.fingerprint != fp:
                        with self._cond:  # updated upstream: drop it, the next request loads the new copy
                            if self._loaded.get(name, {}).get(version) is current:
                                self._retire(self._loaded[name].pop(version), "updated upstream")
                    continue
                if current is not None and current.fingerprint == fp:
                    continue
                failure = self._failures.get((name, version))
                if failure and failure.fingerprint == fp and failure.retry_at > now:
                    continue
                self.load(name, version)
        with self._cond:
            for name in list(self._loaded):
                for version in list(self._loaded[name]):
                    # `disk` can predate a version a request fetched and loaded meanwhile: check the tree itself
                    # (the supervisor deletes a version before it publishes that it is gone).
                    if version not in disk.get(name, {}) and self.tree.manifest(name, version) is None:
                        self._retire(self._loaded[name].pop(version), "removed")
                if not self._loaded[name]:
                    del self._loaded[name]
            if self.cache_size is None:  # with caching, versions off disk are normal; failures expire by time
                for key in [k for k in self._failures if k[1] not in disk.get(k[0], {})]:
                    del self._failures[key]
            idle = [lv for lv in self._retired if lv.refs == 0]
            self._retired = [lv for lv in self._retired if lv.refs > 0]
        for lv in idle:
            self._unload(lv)
        if idle:
            with self._cond:
                self._cond.notify_all()

    def _retire(self, lv: LoadedVersion, why: str) -> None:
        lv.retired = True
        self._retired.append(lv)
        log.info("model %s version %s %s; unloading once idle", lv.name, lv.version, why)

    def _unload(self, lv: LoadedVersion) -> None:
        model, lv.model = lv.model, None
        if self._unload_fn is not None:
            try:
                self._unload_fn(model)
            except Exception:
                log.exception("unload hook failed for model %s version %s", lv.name, lv.version)
        del model
        gc.collect()
        with self._cond:
            self._count_memory()
        log.info("model %s version %s unloaded", lv.name, lv.version)

    def _count_memory(self) -> None:
        """Update the in-memory gauge (the caller holds the lock): loaded, draining and unloading versions."""
        loaded = sum(len(vs) for vs in self._loaded.values())
        draining = sum(1 for lv in self._retired + self._unloading if lv.model is not None)
        metrics.IN_MEMORY.set(loaded + draining)

    # -- loading (single flight per version) ------------------------------------------------------------------
    def load(self, name: str, version: int) -> LoadedVersion | None:
        """Load a version from disk unless another thread already is; return what is loaded afterwards."""
        key = (name, version)
        with self._cond:
            event = self._loading.get(key)
            owner = event is None
            if owner:
                event = self._loading[key] = threading.Event()
        if not owner:
            event.wait()
            return self._loaded.get(name, {}).get(version)
        try:
            return self._load_owned(name, version)
        finally:
            with self._cond:
                del self._loading[key]
                self._cond.notify_all()
            event.set()

    def _load_owned(self, name: str, version: int) -> LoadedVersion | None:
        start = time.perf_counter()
        with self.tree.read_lock(name, version):
            manifest = self.tree.manifest(name, version)
            if manifest is None:
                return None  # removed meanwhile
            fp = manifest["fingerprint"]
            current = self._loaded.get(name, {}).get(version)
            if current is not None and current.fingerprint == fp:
                return current
            log.info("loading model %s version %s", name, version)
            try:
                model = self._load_fn(str(self.tree.model_path(name, version)), name, version)
            except Exception as e:
                self._failures[(name, version)] = LoadFailure(fp, f"{type(e).__name__}: {e}", time.time() + LOAD_RETRY_SECONDS)
                metrics.LOAD_FAILURES.labels(name).inc()
                log.exception("model %s version %s failed to load; %s", name, version,
                              "the previous copy keeps serving" if current else "it is not served")
                return current
        lv = LoadedVersion(name, version, fp, model, time.perf_counter() - start)
        with self._cond:
            old = self._loaded.setdefault(name, {}).get(version)
            self._loaded[name][version] = lv
            self._failures.pop((name, version), None)
            if old is not None:
                self._retire(old, "replaced by a new copy")
            self._count_memory()
        metrics.LOADS.labels(name).inc()
        metrics.LOAD_SECONDS.observe(lv.load_seconds)
        log.info("model %s version %s loaded in %.3fs", name, version, lv.load_seconds)
        return lv

    # -- requests --------------------------------------------------------------------------------------------
    def resolve_name(self, model_name: str | None) -> str:
        if model_name is None:
            if self.single_model is not None:
                return self.single_model
            names = sorted(self._state.get("models", {}))
            raise BadRequest(f"model_name is required: this API serves {len(names)} models ({', '.join(names[:10])})")
        if not isinstance(model_name, str):
            raise BadRequest(f"model_name must be a string, got {type(model_name).__name__}")
        return model_name

    def request_scope(self) -> _Scope:
        """Pin every version a request touches until it ends; the scope says which versions those were."""
        return _Scope(self)

    def get(self, model_name: str | None, model_version: Any = "latest") -> LoadedVersion:
        """The loaded version a request asked for, pinned for the rest of the request."""
        name = self.resolve_name(model_name)
        try:
            version = parse_version(model_version)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        scope = getattr(self._scope, "current", None)
        for _ in range(3):  # a version retired between its load and the pin is looked up again
            with self._cond:
                lv = self._find(name, version)
                # With caching, "latest" is the highest version upstream, not the highest one that happens to be
                # in memory: a newer version is brought in on request (live reloading applies with caching too).
                stale = lv is not None and version is None and self._newer_upstream(name, lv.version)
                if lv is not None and not stale:
                    if scope is not None:
                        lv.refs += 1
                        scope.pinned.append(lv)
                    metrics.CACHE_HITS.inc()
                    return lv
            metrics.CACHE_MISSES.inc()
            try:
                lv_new = self._load_on_demand(name, version)
            except (Unavailable, ModelNotFound):
                if not stale:
                    raise
                # The newer version cannot be served yet (still uploading, failed to load, cache saturated): keep
                # serving the version this request would have had, loading it back if it was evicted meanwhile.
                return self.get(name, lv.version)
            if lv_new is not None and self.cache_size is not None:
                return lv_new  # pinned by _load_cached in the same step that released its reservation
        raise ModelNotFound(f"model '{name}' is being replaced; try again")

    def _newer_upstream(self, name: str, version: int) -> bool:
        """With caching: whether the catalogue holds a usable version of `name` above `version`."""
        if self.cache_size is None:
            return False
        versions = self._state.get("models", {}).get(name, {}).get("versions", {})
        return any(int(v) > version and i.get("upstream") and not i.get("error") for v, i in versions.items())

    def _copy_changed(self, key: tuple[str, int], failure: LoadFailure) -> bool:
        """Whether the disk copy of a version that failed to load has been replaced since (say the failure was
        a half-uploaded version and the upload has finished): then it is tried again at once."""
        name, version = key
        info = self._state.get("models", {}).get(name, {}).get("versions", {}).get(str(version), {})
        return info.get("fingerprint") is not None and info.get("fingerprint") != failure.fingerprint

    def _find(self, name: str, version: int | None) -> LoadedVersion | None:
        """The loaded version to use (the caller holds the lock); "latest" is the highest loaded version."""
        versions = self._loaded.get(name)
        if not versions:
            return None
        if version is None:
            return versions[max(versions)]
        return versions.get(version)

    def _load_on_demand(self, name: str, version: int | None) -> LoadedVersion:
        """A version on disk that this worker has not loaded yet (it just arrived): load it now."""
        self.refresh_state()
        model = self._state.get("models", {}).get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' not found")
        if self.cache_size is not None:
            return self._load_cached(name, version, model)
        on_disk = self._disk_versions().get(name, {})
        target = (max(on_disk) if on_disk else None) if version is None else version
        if target is None or target not in on_disk:
            raise ModelNotFound(self._not_found_reason(name, version, model))
        failure = self._failures.get((name, target))
        recent = failure is not None and failure.fingerprint == on_disk[target] and failure.retry_at > time.time()
        lv = None if recent else self.load(name, target)  # a copy that just failed is not loaded again per request
        if lv is None:
            failure = self._failures.get((name, target))
            reason = f": {failure.error}" if failure else ""
            raise ModelNotFound(f"model '{name}' version {target} is not available{reason}")
        return lv

    @staticmethod
    def _not_found_reason(name: str, version: int | None, model: dict) -> str:
        versions = model.get("versions", {})
        if version is not None and str(version) not in versions:
            have = ", ".join(sorted(versions, key=int)) or "none"
            return f"model '{name}' has no version {version} (versions: {have})"
        errors = [f"version {v}: {i['error']}" for v, i in versions.items() if i.get("error")]
        reason = model.get("error") or "; ".join(errors) or "no version is on disk yet"
        which = f"version {version} is not available" if version is not None else "has no version available"
        return f"model '{name}' {which} ({reason})"

    # -- model caching ---------------------------------------------------------------------------------------
    def _load_cached(self, name: str, version: int | None, model: dict) -> LoadedVersion | None:
        """A cache miss: admit the version (evicting the LRU idle one), have it put on disk, load it, pin it."""
        upstream = [int(v) for v, i in model.get("versions", {}).items() if i.get("upstream") and not i.get("error")]
        target = (max(upstream) if upstream else None) if version is None else version
        if target is None or target not in upstream:
            raise ModelNotFound(self._not_found_reason(name, version, model))
        key = (name, target)
        self._fail_fast(key)
        scope = getattr(self._scope, "current", None)
        with self._cond:  # wanted: reported to the supervisor as in use, and never an eviction victim
            self._wanted[key] = self._wanted.get(key, 0) + 1
        lv = None
        usable = False
        try:
            lv = self._bring_in(key)
        finally:
            with self._cond:
                self._release(self._wanted, key)
                usable = lv is not None and not lv.retired
                if usable and scope is not None:  # pin before any admission can see it idle
                    lv.refs += 1
                    scope.pinned.append(lv)
                self._cond.notify_all()
        if lv is None:
            failure = self._failures.get(key)
            raise Unavailable(f"model '{name}' version {target} could not be loaded"
                              + (f" ({failure.error})" if failure else ""), retry_after=LOAD_RETRY_SECONDS_HINT)
        return lv if usable else None  # replaced upstream meanwhile: the caller looks again

    def _fail_fast(self, key: tuple[str, int]) -> None:
        """A version that failed recently answers 503 at once: it is retried after a pause, not per request."""
        failure = self._failures.get(key)
        if failure and (failure.retry_at <= time.time() or self._copy_changed(key, failure)):
            self._failures.pop(key, None)  # its pause is over, or its copy changed: this request tries again
        elif failure:
            raise Unavailable(f"model '{key[0]}' version {key[1]} failed to load ({failure.error}); retrying later",
                              retry_after=max(1, int(failure.retry_at - time.time())))

    def _bring_in(self, key: tuple[str, int]) -> LoadedVersion | None:
        """Admit, fetch and load one version; None when it failed (the failure is recorded)."""
        name, version = key
        for _ in range(3):  # the disk copy can be evicted by another worker's fetch before the load: go again
            with self._cond:
                lv = self._find(name, version)
            if lv is not None:
                return lv
            victims = self._admit(key)
            try:
                # Asked even when the version is on disk: the supervisor learns it is in use (and recently used),
                # so no other fetch evicts it from disk before it loads.
                lv = self.load(name, version) if self._fetch(name, version) else None
            finally:
                with self._cond:
                    self._release(self._reserved, key)
                    self._cond.notify_all()
            if lv is not None:
                return lv
            if key in self._failures:
                self._restore_later(victims, key)
                return None
        return None

    @staticmethod
    def _release(counts: dict[tuple[str, int], int], key: tuple[str, int]) -> None:
        left = counts.pop(key) - 1
        if left:
            counts[key] = left

    def _held(self) -> tuple[set[tuple[str, int]], int]:
        """The versions in memory, and the memory slots taken (loaded, loading, unloading, draining)."""
        loaded = {(lv.name, lv.version) for versions in self._loaded.values() for lv in versions.values()}
        return loaded, len(loaded | set(self._reserved)) + len(self._unloading) + len(self._retired)

    def _admit(self, key: tuple[str, int]) -> list[LoadedVersion]:
        """Reserve a memory slot for `key`, evicting LRU idle versions first; 503 when all are busy.

        A victim's memory is released (outside the lock: the collector can take a while) before the slot is
        reserved, and it counts as held until then, so the bound holds at every instant. Returns the victims.
        """
        deadline = time.monotonic() + self.admission_wait
        victims: list[LoadedVersion] = []
        with self._cond:
            while True:
                loaded, held = self._held()
                if key in self._reserved or key in loaded:  # another request admitted it: share its slot
                    self._reserved[key] = self._reserved.get(key, 0) + 1
                    return victims
                if held < self.cache_size:
                    self._reserved[key] = 1
                    return victims
                idle = [lv for versions in self._loaded.values() for lv in versions.values()
                        if lv.refs == 0 and (lv.name, lv.version) not in self._reserved
                        and (lv.name, lv.version) not in self._wanted]
                if idle:
                    victim = min(idle, key=lambda lv: self._last_used.get((lv.name, lv.version), 0.0))
                    del self._loaded[victim.name][victim.version]
                    if not self._loaded[victim.name]:
                        del self._loaded[victim.name]
                    self._unloading.append(victim)
                    victims.append(victim)
                    metrics.EVICTIONS.inc()
                    log.info("model %s version %s evicted from memory (least recently used; making room for %s "
                             "version %s)", victim.name, victim.version, *key)
                    self._cond.release()
                    try:
                        self._unload(victim)
                    finally:
                        self._cond.acquire()
                        self._unloading.remove(victim)
                        self._cond.notify_all()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(f"the model cache is saturated: all {self.cache_size} slots are serving "
                                      "requests", retry_after=1)
                self._cond.wait(remaining)

    def _fetch(self, name: str, version: int) -> bool:
        """Ask the supervisor to put a version on disk; False (the failure recorded) when it could not."""
        from workers.supervisor_client import request_fetch

        with self._cond:
            resident = self._held()[0] | set(self._reserved)
            self._report_seq += 1  # fetches run in parallel: lets the supervisor drop a late, older snapshot
            report = [os.getpid(), self._report_seq]
        try:
            error = request_fetch(Path(self._state["control_socket"]), name, version, [list(k) for k in resident],
                                  report)
        except OSError as e:
            raise Unavailable(f"the supervisor cannot be reached to fetch model '{name}' version {version} ({e})",
                              retry_after=LOAD_RETRY_SECONDS_HINT) from None
        if error:
            self._failures[(name, version)] = LoadFailure("", error, time.time() + FETCH_RETRY_SECONDS)
            metrics.LOAD_FAILURES.labels(name).inc()
            log.warning("model %s version %s could not be fetched: %s", name, version, error)
            return False
        return True

    def _restore_later(self, victims: list[LoadedVersion], failed: tuple[str, int]) -> None:
        """Load back, in the background, what was evicted to make room for a version that then failed to load:
        a broken model must not cost a healthy one its place. Only free slots are used; nothing is evicted."""
        keys = [(lv.name, lv.version) for lv in victims]
        if not keys:
            return

        def restore() -> None:
            for key in keys:
                with self._cond:
                    loaded, held = self._held()
                    if key in loaded or held >= self.cache_size:
                        continue
                    self._reserved[key] = self._reserved.get(key, 0) + 1
                try:
                    if self._fetch(*key):
                        if self.load(*key) is not None:
                            log.info("model %s version %s loaded back after %s version %s failed to load",
                                     *key, *failed)
                except Exception:
                    log.exception("model %s version %s could not be loaded back", *key)
                finally:
                    with self._cond:
                        self._release(self._reserved, key)
                        self._cond.notify_all()

        threading.Thread(target=restore, name="cache-restore", daemon=True).start()

    # -- status ----------------------------------------------------------------------------------------------
    def status(self, name: str | None = None) -> list[dict]:
        """TF Serving's model_version_status per model, plus where each version is and its last error."""
        self.refresh_state()
        models = self._state.get("models", {})
        names = sorted(set(models) | set(self._loaded)) if name is None else [name]
        out = []
        with self._cond:
            for n in names:
                info = models.get(n, {"versions": {}, "error": None})
                loaded = self._loaded.get(n, {})
                versions = sorted({int(v) for v in info.get("versions", {})} | set(loaded), reverse=True)
                rows = []
                for v in versions:
                    vi = info.get("versions", {}).get(str(v), {})
                    lv = loaded.get(v)
                    failure = self._failures.get((n, v))
                    error = vi.get("error") or (failure.error if failure else None) or None
                    if lv is not None:
                        state = "AVAILABLE"
                    elif (n, v) in self._loading:
                        state = "LOADING"
                    elif error and not vi.get("disk"):
                        state = "END"
                    elif failure:
                        state = "END"
                    else:
                        state = "START"
                    rows.append({
                        "version": str(v),
                        "state": state,
                        "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error or ""},
                        "upstream": bool(vi.get("upstream")),
                        "disk": bool(vi.get("disk")),
                        "memory": lv is not None,
                        "error": error,
                    })
                for lv in self._retired + self._unloading:
                    if lv.name == n:
                        rows.append({"version": str(lv.version), "state": "UNLOADING",
                                     "status": {"error_code": "OK", "error_message": ""},
                                     "upstream": False, "disk": False, "memory": True, "error": None})
                out.append({"name": n, "error": info.get("error"), "model_version_status": rows})
        return out

    def known(self, name: str) -> bool:
        return name in self._state.get("models", {}) or name in self._loaded
