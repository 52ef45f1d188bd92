"""A request's scope: what it pinned, and its place among the requests in flight.

A request runs inside a `RequestScope`: what the registry hands out on the request's own thread is
pinned in the scope until the scope closes, which the app does after `post_predict`. A hand-out on any other
thread (a predictor's own thread pool, say) cannot be tied to one request, so it is tied to all of them: the
version is pinned until every request that was in flight at that moment has ended (an epoch, `hold_until`).
This is safe because such a thread runs on behalf of some request that was in flight when it asked; that
request's sequence is at most the epoch recorded, and the version stays pinned until it ends. It costs one
integer per record and O(1) per check (`InFlight.holds`), and can only pin longer than needed, never shorter:
with a tiny cache, a request for another model may wait at admission until that epoch has ended.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workers.records import Record

if TYPE_CHECKING:
    from workers.registry import ModelRegistry


class RequestScope:
    """The versions one request pinned, and its place among the requests in flight.

    A plain class rather than a generator-based context manager: it runs on every request. `keep_open()`
    leaves it open past the `with` block (for `post_predict`); `close()` then ends it.
    """

    __slots__ = ("registry", "pinned", "seq", "_open")

    def __init__(self, registry: "ModelRegistry"):
        self.registry = registry
        self.pinned: list[Record] = []
        self.seq = 0
        self._open = False

    def __enter__(self) -> "RequestScope":
        registry = self.registry
        with registry._cond:
            self.seq = registry._inflight.begin()
        registry._local.scope = self
        return self

    def __exit__(self, *exc) -> None:
        if not self._open:
            self.close()

    def keep_open(self) -> None:
        self._open = True

    def activate(self) -> None:
        """Make this the current thread's scope again (the thread that runs `post_predict`)."""
        self.registry._local.scope = self

    def close(self) -> None:
        registry = self.registry
        registry._local.scope = None
        now = time.time()
        with registry._cond:
            registry._inflight.end(self.seq)
            for rec in self.pinned:
                rec.refs -= 1
                rec.last_used = now
            if registry.cache_size is not None or registry._leaving:
                registry._cond.notify_all()  # an admission or a drain may be waiting for this request
