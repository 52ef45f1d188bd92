"""A request's scope: what it pinned, and its place among the requests in flight.

A request runs inside a `RequestScope`: what the registry hands out in the request's context is pinned in the
scope until the scope closes, which the app does after `post_predict`. The scope is a context variable, and
every `ThreadPoolExecutor` in a worker carries the submitter's context (`carry_context_into_thread_pools`), so
the work an ensemble submits to its own pool is pinned in the request's own scope too: pinned exactly as long
as the request that uses it (live), and never released while that request runs (safe). A hand-out in a scope
that has already closed, or with no scope at all (a `threading.Thread` the predictor starts itself), cannot be
tied to one request, so it is tied to all of them: the version is pinned until every request that was in flight at that moment has ended (an epoch, `hold_until`).
This is safe because such a thread runs on behalf of some request that was in flight when it asked; that
request's sequence is at most the epoch recorded, and the version stays pinned until it ends. It costs one
integer per record and O(1) per check (`InFlight.holds`), and can only pin longer than needed, never shorter:
with a tiny cache, a request for another model may wait at admission until that epoch has ended.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import time
from typing import TYPE_CHECKING

from workers.records import Record

if TYPE_CHECKING:
    from workers.registry import ModelRegistry


CURRENT_SCOPE: contextvars.ContextVar["RequestScope | None"] = contextvars.ContextVar("replica_scope", default=None)

_plain_submit = concurrent.futures.ThreadPoolExecutor.submit


def _submit_in_context(self, fn, /, *args, **kwargs):
    return _plain_submit(self, contextvars.copy_context().run, fn, *args, **kwargs)


def carry_context_into_thread_pools() -> None:
    """Make every `ThreadPoolExecutor.submit` in this process run its callable in a copy of the submitter's
    context, as OpenTelemetry's threading instrumentation does, so an ensemble's pool work is pinned in its
    request's scope without the predictor saying so. Called once in each worker, before the predictor is
    imported; a predictor that already submits `copy_context().run` gets a copy of that copy, the same
    thing."""
    concurrent.futures.ThreadPoolExecutor.submit = _submit_in_context


class RequestScope:
    """The versions one request pinned, and its place among the requests in flight.

    A plain class rather than a generator-based context manager: it runs on every request. `keep_open()`
    leaves it open past the `with` block (for `post_predict`); `close()` then ends it.
    """

    __slots__ = ("registry", "pinned", "seq", "closed", "_open")

    def __init__(self, registry: "ModelRegistry"):
        self.registry = registry
        self.pinned: list[Record] = []
        self.seq = 0
        self.closed = False  # set under the registry's lock: a hand-out after it is not pinned here
        self._open = False

    def __enter__(self) -> "RequestScope":
        registry = self.registry
        with registry._cond:
            self.seq = registry._inflight.begin()
        CURRENT_SCOPE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        if not self._open:
            self.close()

    def keep_open(self) -> None:
        self._open = True

    def activate(self) -> None:
        """Make this the current thread's scope again (the thread that runs `post_predict`)."""
        CURRENT_SCOPE.set(self)

    def close(self) -> None:
        registry = self.registry
        CURRENT_SCOPE.set(None)
        now = time.time()
        with registry._cond:
            self.closed = True
            registry._inflight.end(self.seq)
            for rec in self.pinned:
                rec.refs -= 1
                rec.last_used = now
            if registry.cache_size is not None or registry._leaving:
                registry._cond.notify_all()  # an admission or a drain may be waiting for this request
