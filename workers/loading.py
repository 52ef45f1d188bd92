"""Loading one version's disk copy into its record: single flight, swap only once loaded, failures recorded.

Part of the registry (workers/registry.py), kept apart because it is the one place that runs the predictor's
`load_model`: under the version's shared file lock, with every exception, whatever raised it, recorded on the
version (retried with backoff) instead of escaping into the sync loop or a request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from replica import quarantine
from replica.backoff import backoff
from replica.quantity import format_bytes
from replica.redact import known_places, public_message
from workers import memory, metrics
from workers.records import Record, State
from workers.user_calls import DeadlineExceeded, call_with_deadline

log = logging.getLogger(__name__)

LOAD_RETRY_SECONDS = 30.0  # a copy that failed to load is tried again after this, doubling up to the ceiling
LOAD_RETRY_CEILING = 600.0


class VersionLoader:
    """The loading half of ModelRegistry (which provides the lock, the records and the tree)."""

    def _fail(self, rec: Record, error: str, fingerprint: str = "", base: float = LOAD_RETRY_SECONDS,
              retry_after: float | None = None) -> None:
        """Record a failed fetch or load on the version: retried after `retry_after` seconds when given (the
        supervisor's own retry time), else after a backoff; served copy kept. Clients see the error without
        this machine's paths or endpoints; the log has it whole."""
        error = public_message(error, known_places(str(self.tree.root), str(self.tree.run)))
        with self._cond:
            rec.attempts += 1
            rec.error = error
            rec.failed_fingerprint = fingerprint
            delay = retry_after if retry_after is not None else backoff(rec.attempts, base, LOAD_RETRY_CEILING)
            rec.retry_at = time.time() + delay
            rec.supervised = retry_after is not None
            rec.failed_seq = self.feed.seq
            if rec.state is not State.READY:
                rec.state = State.FAILED
                self._failed(rec)
            self._count_memory()
        metrics.LOAD_FAILURES.labels(metrics.model_label(rec.name)).inc()

    def _failed(self, rec: Record) -> None:
        """A version that held a slot failed (the caller holds the lock); the caching registry gives the slot back."""

    def _land(self, rec: Record, event: threading.Event) -> None:
        """End a version's single flight: later requests start their own, and those waiting on it wake."""
        with self._cond:
            rec.flight = None
            self._cond.notify_all()
        event.set()

    def load(self, name: str, version: int) -> Record | None:
        """Load the disk copy of a version unless another thread already is; return the served copy after."""
        with self._cond:
            rec = self._current(name, version)
            if rec is not None and rec.flight is not None:
                event, owner = rec.flight, False
            else:
                rec = rec if rec is not None and rec.state in (State.READY, State.FAILED) else None
                rec = rec or self._put(Record(name, version, State.LOADING))
                if rec.state is State.FAILED:
                    rec.state = State.LOADING
                event, owner = threading.Event(), True
                rec.flight = event
        if owner:
            try:
                self._load_into(rec)
            finally:
                self._land(rec, event)
        else:
            event.wait()
        with self._cond:
            rec = self._current(name, version)
            return rec if rec is not None and rec.state is State.READY else None

    def _call_load(self, name: str, version: int, fp: str) -> tuple[Any, int]:
        """The predictor's load_model and the memory it added (workers/memory.py), marked for the master while it
        runs (replica/quarantine.py), with the `--load-timeout` deadline; a load that returns after its
        deadline has its model unloaded at once. Under a byte budget loads are measured one at a time."""
        def run() -> tuple[Any, int]:
            path = self.tree.model_path(name, version)
            with self.marks.loading(name, version, fp), self._measure_lock, memory.measuring(path) as grown:
                model = self._load_fn(str(path), name, version)
            return model, grown.bytes

        def late(loaded: tuple[Any, int]) -> None:
            log.warning("model %s version %s: the load_model abandoned at its deadline returned; its model is "
                        "discarded", name, version)
            self._free(loaded[0], name, version)

        return call_with_deadline(run, self.load_timeout, (name, version, fp),
                                  f"load_model of model {name} version {version}", self.abandoned, late)

    def _load_into(self, rec: Record) -> bool:
        """Load the version's disk copy into `rec` (or a new copy beside a served one); False when it failed."""
        name, version = rec.key
        fp = ""
        try:
            start = time.perf_counter()
            with self.tree.read_lock(name, version):
                manifest = self.tree.manifest(name, version)
                if manifest is None:
                    with self._cond:
                        if rec.state is State.LOADING:
                            self._drop(rec)  # removed meanwhile
                    return False
                fp = manifest["fingerprint"]
                if rec.state is State.READY and rec.fingerprint == fp:
                    return True
                held = quarantine.quarantined(self.tree.workers_dir, name, version, fp, time.time())
                if held is not None:
                    reason, seconds = held
                    self._fail(rec, f"quarantined: {reason}", fp, retry_after=seconds)
                    log.warning("model %s version %s is quarantined (%s); not loading it", name, version, reason)
                    return False
                since = self.abandoned.running(rec.key + (fp,))
                if since is not None:
                    self._fail(rec, f"its load_model has not returned after {time.time() - since:.0f} s "
                                    "(--load-timeout); not loaded again until that copy changes", fp,
                               base=max(LOAD_RETRY_SECONDS, self.load_timeout))
                    return False
                log.info("loading model %s version %s", name, version)
                model, measured = self._call_load(name, version, fp)
        except DeadlineExceeded as e:
            self._fail(rec, f"load_model {e} (--load-timeout); it is left running and the version is tried "
                            "again after a backoff, or at once when it changes upstream", fp,
                       base=max(LOAD_RETRY_SECONDS, self.load_timeout))
            log.error("model %s version %s: load_model %s (--load-timeout); the version is FAILED%s", name, version,
                      e, "; the previous copy keeps serving" if rec.state is State.READY else "")
            return False
        except Exception as e:
            served = rec.state is State.READY
            self._fail(rec, f"{type(e).__name__}: {e}", fp)
            log.exception("model %s version %s failed to load; %s", name, version,
                          "the previous copy keeps serving" if served else "it is not served")
            return False
        seconds = time.perf_counter() - start
        with self._cond:
            if rec.state is State.READY:  # a new copy of a served version: swap, drain the old one
                self._retire(rec, "replaced by a new copy")
                rec = self._put(Record(name, version, State.LOADING, last_used=rec.last_used))
            rec.state, rec.model, rec.fingerprint, rec.load_seconds = State.READY, model, fp, seconds
            rec.error, rec.attempts, rec.retry_at = None, 0, 0.0
            rec.memory_bytes = measured
            self._count_memory()
            self._cond.notify_all()
        metrics.LOADS.labels(metrics.model_label(name)).inc()
        metrics.LOAD_SECONDS.observe(seconds)
        log.info("model %s version %s loaded in %.3fs (%s in memory)", name, version, seconds, format_bytes(measured))
        return self._measured(rec, manifest)

    def _measured(self, rec: Record, manifest: dict) -> bool:
        """A version just loaded, its size measured; the caching registry checks it against its byte budget
        (False: it did not fit and was unloaded)."""
        return True
