"""Admission and eviction for a bounded cache of model versions: one policy for memory and for disk.

The workers' memory tier and the supervisor's disk tier keep the same kind of bound (at most `capacity`
versions at every instant, least recently *requested* leaves first, a version in use never leaves), so they
share this function. It is pure: it sees a snapshot of the slots and answers; the caller applies the answer
under its own lock, and marks the victims as leaving (they keep counting) until their resources are freed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Hashable, Iterable

Key = Hashable  # (name, version) in both tiers


@dataclass(frozen=True, slots=True)
class Slot:
    """One version that counts against the bound."""

    key: Key
    last_used: float  # when a request last used it (wall clock); older leaves first
    idle: bool  # may be evicted: not pinned, not loading or leaving, not being brought in by a request


def victims(slots: Iterable[Slot], capacity: int, key: Key) -> list[Key] | None:
    """The versions to evict so that `key` fits within `capacity`, least recently used first.

    [] when it fits already (or already holds a slot: concurrent requests share it); None when it cannot fit
    now because too few slots are idle: the caller waits for a request to end, or refuses. Evicting only what
    is needed, never more, keeps the cache as warm as the bound allows.
    """
    slots = list(slots)
    if any(s.key == key for s in slots):
        return []
    excess = len(slots) + 1 - capacity
    if excess <= 0:
        return []
    idle = [s for s in slots if s.idle]
    if len(idle) < excess:
        return None
    return [s.key for s in heapq.nsmallest(excess, idle, key=lambda s: s.last_used)]
