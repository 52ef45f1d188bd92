"""The process-wide pool that runs the parts of every download: at most `size` at once, shared fairly.

A bound alone, served first come first served, would let one large file, its parts queued first, hold every
slot until it ends: a small model's update, or a request waiting for a cold model, would wait for all of it,
and at a trickle that is minutes. So a free slot goes to the file with the fewest parts running (the first
to arrive among equals), and while every slot is taken and a file waits with at least two parts fewer
running than another, one of that other file's parts stops at its next socket read and queues the rest of
its range: a download that starts gets its share of the bound within one read of asking, and the bound holds.

Threads are daemons, started on demand up to `size`, and end once nothing waits (an idle replica keeps none):
a part blocked on a silent upstream never holds up the replica's exit. Each runs `nice` nicer than the
process (Linux schedules threads, so a thread's niceness is its own): a pool that works in the background gives the
CPU to whatever else runs the moment that wants it, and takes all of it while nothing does.
"""

from __future__ import annotations

import collections
import os
import threading


def lower_priority(by: int) -> None:
    """Make the calling thread `by` nicer than the process's main thread, at most 19, unless it is already
    nicer (a thread inherits its creator's niceness). For a thread that ends with its background work: a
    thread cannot raise its priority back unprivileged."""
    if by:
        try:
            tid = threading.get_native_id()
            wanted = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + by)
            if wanted > os.getpriority(os.PRIO_PROCESS, tid):
                os.setpriority(os.PRIO_PROCESS, tid, wanted)  # this thread only
        except (AttributeError, OSError):  # not Linux, or not allowed: the thread runs as it is
            pass


class Parts:
    """One file's parts as the pool schedules them: which wait, how many run. The pool calls `run` in one of
    its threads without the lock, then `ended` with the lock held; `waiting` and `running` change only under
    the pool's lock, which `cond` shares."""

    def __init__(self, pool: PartPool, count: int):
        self.pool = pool
        self.waiting: collections.deque[int] = collections.deque(range(count))
        self.running = 0
        self.cond = threading.Condition(pool.lock)

    def run(self, index: int) -> object:
        """Run part `index` (without the lock); what `ended` is told. Must not raise."""
        raise NotImplementedError

    def ended(self, index: int, outcome: object) -> None:
        """Part `index` stopped (the lock held): record the outcome; put it back in `waiting` if it yielded."""
        raise NotImplementedError


class PartPool:
    """At most `size` parts running at once, over every file added; see the module's docstring."""

    def __init__(self, size: int, name: str = "part", nice: int = 0):
        self.size = max(1, size)
        self.name = name
        self.nice = nice
        self.lock = threading.Lock()
        self._files: list[Parts] = []  # files with parts waiting or running, in the order they came
        self._threads = 0
        self._busy = 0  # threads running a part
        self._started = 0
        self._unfair = False  # a hint read without the lock per socket read; set under it

    def add(self, parts: Parts) -> None:
        """Schedule a file's parts; they start as slots free up."""
        with self.lock:
            self._files.append(parts)
            idle = self._threads - self._busy  # threads between two parts, about to take the next
            spawn = max(0, min(self.size - self._threads, sum(len(f.waiting) for f in self._files) - idle))
            self._threads += spawn
            numbers = range(self._started + 1, self._started + 1 + spawn)
            self._started += spawn
            self._update_hint()
        for number in numbers:
            threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True).start()

    def cancel(self, parts: Parts) -> None:
        """No part of `parts` starts from here on (the lock held); the running ones end as they will."""
        parts.waiting.clear()
        self._retire(parts)

    def should_yield(self, parts: Parts) -> bool:
        """Whether a running part of `parts` should stop here and queue the rest of its range: every slot is
        taken and another file waits with at least two parts fewer running."""
        if not self._unfair:
            return False
        with self.lock:
            return self._busy >= self.size and self._starved_beside(parts)

    def _starved_beside(self, parts: Parts) -> bool:
        return any(f.waiting and f.running + 1 < parts.running for f in self._files if f is not parts)

    def _work(self) -> None:
        lower_priority(self.nice)
        while True:
            with self.lock:
                waiting = [f for f in self._files if f.waiting]
                if not waiting:
                    self._threads -= 1
                    return
                parts = min(waiting, key=lambda f: f.running)  # min keeps the first of equals
                index = parts.waiting.popleft()
                parts.running += 1
                self._busy += 1
                self._update_hint()
            outcome = parts.run(index)
            with self.lock:
                parts.running -= 1
                self._busy -= 1
                parts.ended(index, outcome)
                self._retire(parts)

    def _retire(self, parts: Parts) -> None:
        """Forget a file with nothing waiting or running (the lock held)."""
        if not parts.waiting and not parts.running and parts in self._files:
            self._files.remove(parts)
        self._update_hint()

    def _update_hint(self) -> None:
        busiest = max((f.running for f in self._files), default=0)
        self._unfair = self._busy >= self.size and any(f.waiting and f.running + 1 < busiest for f in self._files)
