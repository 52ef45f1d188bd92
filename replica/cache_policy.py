"""Admission and eviction for a bounded cache of model versions: one policy for memory and for disk.

The workers' memory tier and the supervisor's disk tier keep the same kind of bound (at most `capacity`
versions at every instant, least recently *requested* leaves first, a version in use never leaves), so they
share this function; the memory tier may also bound the bytes its versions take (`budget`). It is pure: it sees a snapshot of the slots and answers; the caller applies the answer
under its own lock, and marks the victims as leaving (they keep counting) until their resources are freed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable

Key = Hashable  # (name, version) in both tiers


@dataclass(frozen=True, slots=True)
class Slot:
    """One version that counts against the bound."""

    key: Key
    last_used: float  # when a request last used it (wall clock); older leaves first
    idle: bool  # may be evicted: not pinned, not loading or leaving, not being brought in by a request
    size: int = 0  # bytes it takes (measured, or reserved while it loads), for a byte budget


def victims(slots: Iterable[Slot], capacity: int, key: Key, budget: int | None = None,
            need: int = 0) -> list[Key] | None:
    """The versions to evict so that `key` fits within `capacity` versions and, with a `budget`, its `need`
    bytes fit beside the others' sizes: least recently used first.

    [] when it fits already (or already holds a slot: concurrent requests share it); None when it cannot fit
    now because too few slots or bytes are idle: the caller waits for a request to end, or refuses (a `need`
    above the whole budget never fits: the caller refuses it first). Evicting only what is needed, never more,
    keeps the cache as warm as the bounds allow.
    """
    slots = list(slots)
    if any(s.key == key for s in slots):
        return []
    excess = len(slots) + 1 - capacity
    over = sum(s.size for s in slots) + need - budget if budget is not None else 0
    if excess <= 0 and over <= 0:
        return []
    chosen: list[Key] = []
    freed = 0
    for s in sorted((s for s in slots if s.idle), key=lambda s: s.last_used):
        if len(chosen) >= excess and freed >= over:
            break
        chosen.append(s.key)
        freed += s.size
    if len(chosen) < excess or freed < over:
        return None
    return chosen
