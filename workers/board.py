"""The worker processes' shared board: per process, its open connections and its requests in flight.

gunicorn's workers share one listening socket and race for each connection; a keep-alive connection then stays
with whoever won it, so one process can end up with every connection while the others idle. Each front worker
publishes its counts here and accepts only while it holds no more connections than the least loaded live worker
that is ready (nginx's `least_conn`, which Cortex ran in front of its processes), and the replica-wide count of requests in
flight bounds admission (`autoscaling.max_replica_concurrency`).

The board is a small file mapped shared by every worker: created by the gunicorn master before it forks, one
slot per worker. A worker claims the first slot it can lock (`lockf` on the slot's byte): the kernel drops the
lock when the process dies, so a replacement takes over a dead worker's slot without any bookkeeping in the
master. A slot counts only while its heartbeat is fresh, so a dead or frozen worker neither holds back the
others' accepting nor its stale requests the admission count.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile

SLOTS = 256
# pid, heartbeat (ms, CLOCK_MONOTONIC, shared by every process), open connections, requests in flight, ready,
# request threads stuck in user code past --request-timeout, retiring (replaced because of them)
FIELDS = 7
PID, BEAT, CONNS, IN_FLIGHT, READY, STUCK, RETIRING = range(FIELDS)
HWM = SLOTS * FIELDS  # one word after the slots: 1 + the highest slot ever claimed, so readers scan only those
STALE_MS = 2000


def may_accept(mine: int, ready: bool, others: list[tuple[int, bool]]) -> bool:
    """Least connections among the workers that can serve: accept while no ready live worker holds fewer
    connections than this one. A worker still loading its models accepts only while no other is ready (a
    replacement for a killed worker must not take the connections its ready siblings can answer)."""
    if ready:
        pool = [c for c, r in others if r]
    elif any(r for _, r in others):
        return False
    else:
        pool = [c for c, _ in others]
    return not pool or mine <= min(pool)


def stalled(rows: list[tuple[int, int, bool]], now_ms: int, after_ms: int) -> list[tuple[int, int]]:
    """Liveness: (pid, milliseconds since its last beat) of every ready worker whose event loop has not beaten for
    more than `after_ms`. A worker still starting (not ready) is the master's boot timeout's business, and a
    slot whose pid is gone belongs to a dead worker the master replaces anyway."""
    return [(pid, now_ms - beat) for pid, beat, ready in rows if pid and ready and now_ms - beat > after_ms]


def should_retire(stuck: int, threads: int) -> bool:
    """A worker is replaced once half or more of its request threads are stuck in user code (the first stuck
    one, with one or two threads): it still serves with the rest while its replacement starts, and one stuck
    thread among many costs no restart."""
    return stuck > 0 and 2 * stuck >= threads


def over_limit(in_flight: int, limit: int) -> bool:
    """Admission: a request that would make more than `limit` in flight across the replica is refused."""
    return in_flight >= limit


class Board:
    """The shared mapping; create it in the master (`Board.create`), claim a slot in each worker (`claim`)."""

    def __init__(self, fd: int):
        self.fd = fd
        self._map = mmap.mmap(fd, (HWM + 1) * 8, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = memoryview(self._map).cast("q")
        self.slot = -1
        self._base = -1

    @classmethod
    def create(cls, directory: str | None = None) -> "Board":
        fd, path = tempfile.mkstemp(prefix="replica-board-", dir=directory)
        os.unlink(path)  # lives as long as a process holds the descriptor
        os.ftruncate(fd, (HWM + 1) * 8)
        return cls(fd)

    def claim(self) -> int:
        """Take the first free slot for this process (held until it exits) and reset it."""
        for slot in range(SLOTS):
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            except OSError:
                continue
            base = slot * FIELDS
            w = self.words
            w[base + CONNS] = w[base + IN_FLIGHT] = w[base + READY] = w[base + STUCK] = w[base + RETIRING] = 0
            w[base + PID] = os.getpid()
            self.slot, self._base = slot, base
            if w[HWM] < slot + 1:
                w[HWM] = slot + 1
            return slot
        raise RuntimeError(f"all {SLOTS} worker slots are taken")

    def beat(self, now_ms: int) -> None:
        self.words[self._base + BEAT] = now_ms

    def set_counts(self, conns: int, in_flight: int, ready: bool) -> None:
        self.words[self._base + CONNS] = conns
        self.words[self._base + IN_FLIGHT] = in_flight
        self.words[self._base + READY] = ready

    def set_stuck(self, stuck: int, retiring: bool) -> None:
        self.words[self._base + STUCK] = stuck
        self.words[self._base + RETIRING] = retiring

    def retiring(self, pid: int) -> bool:
        """Whether the worker `pid` asked for its replacement (read by the master when it reaps it)."""
        w = self.words
        return any(w[base + PID] == pid and w[base + RETIRING] for base in range(0, w[HWM] * FIELDS, FIELDS))

    def stuck(self) -> list[tuple[int, int, bool]]:
        """(pid, stuck request threads, retiring) of every live-looking slot with threads stuck."""
        w = self.words
        return [(w[base + PID], w[base + STUCK], bool(w[base + RETIRING]))
                for base in range(0, w[HWM] * FIELDS, FIELDS) if w[base + PID] and w[base + STUCK]]

    def add_in_flight(self, delta: int) -> None:
        """Only the owning worker's event loop writes its slot (a read-modify-write from several threads could
        lose an update)."""
        self.words[self._base + IN_FLIGHT] += delta

    def others(self, now_ms: int) -> list[tuple[int, bool]]:
        """(open connections, ready) of every other live worker."""
        w, out, oldest = self.words, [], now_ms - STALE_MS
        for base in range(0, w[HWM] * FIELDS, FIELDS):
            if base != self._base and w[base + BEAT] > oldest and w[base + PID]:
                out.append((w[base + CONNS], bool(w[base + READY])))
        return out

    def rows(self) -> list[tuple[int, int, bool]]:
        """(pid, last beat in ms, ready) of every slot ever claimed, this process's own included."""
        w = self.words
        return [(w[base + PID], w[base + BEAT], bool(w[base + READY])) for base in range(0, w[HWM] * FIELDS, FIELDS)]

    def total_in_flight(self, now_ms: int) -> int:
        w, total, oldest = self.words, 0, now_ms - STALE_MS
        for base in range(0, w[HWM] * FIELDS, FIELDS):
            if base == self._base or (w[base + BEAT] > oldest and w[base + PID]):
                total += w[base + IN_FLIGHT]
        return total
