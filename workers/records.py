"""One record per model version a worker knows beyond the catalogue, and the requests in flight.

A record carries everything about one copy of a version: its explicit state, the model object, how many
requests pin it, when it was last requested, its last error with the time it may be retried, and the event
that concurrent requests for it wait on (single flight). Every field is read and written under the registry's
one lock. In the spirit of TF Serving's LoaderHarness (a state machine per servable version) and
ServableHandle (a reference that keeps the servable alive while held).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Any

from replica.cache_policy import Slot


class State(enum.Enum):
    QUEUED = "QUEUED"  # a request wants it and waits for a memory slot (model caching)
    FETCHING = "FETCHING"  # has its memory slot; the supervisor is putting it on disk
    LOADING = "LOADING"  # a memory slot is taken and load_model runs
    READY = "READY"  # served
    DRAINING = "DRAINING"  # replaced or removed: unloaded once nothing pins it
    UNLOADING = "UNLOADING"  # evicted or drained; its memory counts until it is released
    FAILED = "FAILED"  # the last fetch or load failed; tried again after `retry_at`


# The states that hold a memory slot (FETCHING: reserved for the load that follows).
IN_MEMORY = frozenset({State.FETCHING, State.LOADING, State.READY, State.DRAINING, State.UNLOADING})


@dataclass(eq=False)
class Record:
    name: str
    version: int
    state: State
    fingerprint: str = ""
    model: Any = None
    refs: int = 0  # requests that pinned it in their scope
    hold_until: int = 0  # handed out outside a scope: pinned until every request up to this sequence has ended
    wanted: int = 0  # requests bringing it in, up to their pin: not evictable meanwhile
    last_used: float = 0.0
    error: str | None = None
    failed_fingerprint: str = ""  # the copy the last failure was about ("" for a failed fetch)
    retry_at: float = 0.0
    supervised: bool = False  # the supervisor keeps this failure: its record, in the feed, says when to retry
    failed_seq: int = -1  # the feed's change number when it failed: a row written after it is newer news
    attempts: int = 0  # failures in a row, for the backoff
    flight: threading.Event | None = field(default=None, repr=False)
    displaced: list = field(default_factory=list)  # evicted to make room for it: their slot if it fails
    freed_for: "Record | None" = field(default=None, repr=False)  # the bring-in this copy is unloaded for
    unloads: list = field(default_factory=list, repr=False)  # events: its victims' unloads, awaited before its load
    load_seconds: float = 0.0
    memory_bytes: int = 0  # what it takes in memory: measured once loaded, the estimate reserved while it loads

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)


class InFlight:
    """The requests being served, by sequence number (the caller holds the registry's lock).

    Sequence numbers only grow and a dict keeps insertion order, so the oldest request in flight is the
    first key: checking whether an epoch is over costs O(1).
    """

    __slots__ = ("_seq", "_live")

    def __init__(self) -> None:
        self._seq = 0
        self._live: dict[int, None] = {}

    def begin(self) -> int:
        self._seq += 1
        self._live[self._seq] = None
        return self._seq

    def end(self, seq: int) -> None:
        self._live.pop(seq, None)

    @property
    def latest(self) -> int:
        """The sequence of the last request started: the epoch a hand-out outside a scope is tied to."""
        return self._seq

    def holds(self, epoch: int) -> bool:
        """Whether a request started at or before `epoch` is still in flight."""
        return bool(self._live) and next(iter(self._live)) <= epoch


def pinned(rec: Record, inflight: InFlight) -> bool:
    return rec.refs > 0 or inflight.holds(rec.hold_until)


def evictable(rec: Record, inflight: InFlight) -> bool:
    """A served version nothing uses or is bringing in (the caller holds the lock)."""
    return rec.state is State.READY and rec.wanted == 0 and not pinned(rec, inflight)


def memory_slots(records: list[Record], inflight: InFlight) -> list[Slot]:
    """The memory tier as the policy sees it: every copy that holds or is about to hold memory."""
    return [Slot(r.key if r.state is not State.DRAINING and r.state is not State.UNLOADING else id(r),
                 r.last_used, evictable(r, inflight), r.memory_bytes)
            for r in records if r.state in IN_MEMORY]
