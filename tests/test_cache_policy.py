"""The admission and eviction policy with the version records, driven through random event sequences.

A single-threaded model of one worker and its supervisor, built from the real pieces: `victims` (the policy
both tiers use), `Record`, its states, `memory_slots`, `pinned` and `InFlight` (the epoch). Each event is one
of the things that happen to a replica: a request (on the request's thread, or on a thread the predictor
started), a fetch done or failed, a load done or failed, a request's end, an upstream change, a removal, time
passing. After every event: memory and disk within their bounds, nothing pinned was ever evicted or unloaded,
and every version evicted for one whose fetch or load then failed holds the slot it lost again.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from replica.backoff import backoff
from replica.cache_policy import Slot, victims
from workers.records import IN_MEMORY, InFlight, Record, State, memory_slots, pinned

CACHE, DISK = 3, 4
NAMES = ["a", "b", "c", "d", "e", "f"]


def test_victims_evicts_only_what_is_needed_least_recently_used_first():
    slots = [Slot(("a", 1), 3.0, True), Slot(("b", 1), 1.0, True), Slot(("c", 1), 2.0, False)]
    assert victims(slots, 3, ("d", 1)) == [("b", 1)]
    assert victims(slots, 4, ("d", 1)) == []
    assert victims(slots, 2, ("d", 1)) == [("b", 1), ("a", 1)]
    assert victims(slots, 1, ("d", 1)) is None  # c is busy: it cannot fit
    assert victims(slots, 3, ("c", 1)) == []  # already holds a slot: shared


class Replica:
    """One worker's records and the supervisor's disk tier, advanced one event at a time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.records: dict[str, Record] = {}  # version 1 of each name
        self.leaving: list[Record] = []  # drained copies not yet unloaded
        self.inflight = InFlight()
        self.requests: dict[int, list[Record]] = {}  # seq -> what its scope pinned
        self.waiting: dict[int, str] = {}  # seq -> the version it waits for
        self.disk: set[str] = set()
        self.held: set[str] = set()  # what the worker holds on disk (ensure/release)
        self.disk_last_used: dict[str, float] = {}
        self.restoring: set[str] = set()

    # -- helpers -----------------------------------------------------------------------------------------
    def all_records(self) -> list[Record]:
        return list(self.records.values()) + self.leaving

    def _evict_memory(self, name: str) -> None:
        rec = self.records.pop(name)
        assert rec.state is State.READY and rec.wanted == 0, f"evicted {rec}"
        assert not pinned(rec, self.inflight), f"evicted a pinned version {rec}"
        self._release(rec)

    def _release(self, rec: Record) -> None:
        self.held.discard(rec.name)
        self.disk_last_used[rec.name] = max(self.disk_last_used.get(rec.name, 0.0), rec.last_used)

    def _fail_waiters(self, name: str) -> None:
        for seq in [s for s, n in self.waiting.items() if n == name]:
            del self.waiting[seq]  # answered 503
            self._end(seq)

    def _failed(self, rec: Record) -> None:
        """The registry's hand-back: the slot goes to the first displaced version without a record."""
        self._fail_waiters(rec.name)
        self._release(rec)
        displaced, rec.displaced = rec.displaced, []
        for name in displaced:
            if name not in self.records:
                self.records[name] = Record(name, 1, State.FETCHING)
                self.held.add(name)
                self.restoring.add(name)
                return

    # -- events ------------------------------------------------------------------------------------------
    def request(self, name: str, in_scope: bool) -> None:
        seq = self.inflight.begin()
        self.requests[seq] = []
        rec = self.records.get(name)
        if rec is not None and rec.state is State.READY:
            self._pin(seq, rec, in_scope)
            return
        if rec is not None and rec.state is State.FAILED and rec.retry_at > self.now:
            self._end(seq)  # 503 with Retry-After
            return
        if rec is not None and rec.state in IN_MEMORY:  # being brought in: share it
            rec.wanted += 1
            self.waiting[seq] = name
            return
        choice = victims(memory_slots(self.all_records(), self.inflight), CACHE, (name, 1))
        choice = None if choice is None else [key[0] for key in choice]
        if choice is None:
            self._end(seq)  # saturated: 503
            return
        for victim in choice:
            self._evict_memory(victim)
        rec = Record(name, 1, State.FETCHING, displaced=list(choice), wanted=1, attempts=rec.attempts if rec else 0)
        self.records[name] = rec
        self.held.add(name)
        self.waiting[seq] = name

    def _pin(self, seq: int, rec: Record, in_scope: bool) -> None:
        if in_scope:
            rec.refs += 1
            self.requests[seq].append(rec)
        else:  # a thread the predictor started, during this request
            rec.hold_until = self.inflight.latest

    def fetch_done(self, name: str) -> None:
        rec = self.records.get(name)
        if rec is None or rec.state is not State.FETCHING:
            return
        if name not in self.disk:
            slots = [Slot(d, self.disk_last_used.get(d, 0.0), d not in self.held) for d in sorted(self.disk)]
            choice = victims(slots, DISK, name)
            if choice is None:  # every version on disk is held: a transient 503, no failure recorded
                del self.records[name]
                self._failed(rec)
                return
            for victim in choice:
                assert victim not in self.held, f"evicted {victim} from disk while a worker holds it"
                self.disk.remove(victim)
            self.disk.add(name)
        rec.state = State.LOADING

    def fetch_failed(self, name: str) -> None:
        self._fail(name, State.FETCHING)

    def load_failed(self, name: str) -> None:
        self._fail(name, State.LOADING)

    def _fail(self, name: str, state: State) -> None:
        rec = self.records.get(name)
        if rec is None or rec.state is not state:
            return
        displaced = list(rec.displaced)
        rec.attempts += 1
        rec.retry_at = self.now + backoff(rec.attempts, 5.0, 600.0)
        rec.state = State.FAILED
        rec.wanted = 0
        self.restoring.discard(name)
        self._failed(rec)
        for lost in displaced[:1]:
            back = self.records.get(lost)
            assert back is not None and back.state in IN_MEMORY | {State.FAILED}, \
                f"{lost} was evicted for {name}, which failed, and did not get its slot back"

    def load_done(self, name: str) -> None:
        rec = self.records.get(name)
        if rec is None or rec.state is not State.LOADING or name not in self.disk:
            return
        rec.state, rec.attempts, rec.displaced = State.READY, 0, []
        self.restoring.discard(name)
        for seq in [s for s, n in self.waiting.items() if n == name]:
            del self.waiting[seq]
            rec.wanted -= 1
            self._pin(seq, rec, in_scope=True)

    def end(self, index: int) -> None:
        live = sorted(self.requests)
        if live:
            self._end(live[index % len(live)])

    def _end(self, seq: int) -> None:
        for rec in self.requests.pop(seq):
            rec.refs -= 1
            rec.last_used = self.now
        waited = self.waiting.pop(seq, None)
        if waited is not None and waited in self.records:
            self.records[waited].wanted -= 1
        self.inflight.end(seq)

    def upstream_change(self, name: str, removed: bool) -> None:
        """A new copy (or a removal) upstream: the served copy drains; a removal also leaves the disk."""
        if removed:
            self.disk.discard(name)
        rec = self.records.get(name)
        if rec is not None and rec.state is State.READY:
            del self.records[name]
            rec.state = State.DRAINING
            self.leaving.append(rec)

    def tick(self, seconds: float) -> None:
        """Time passes; the sync loop unloads drained copies nothing pins."""
        self.now += seconds
        for rec in [r for r in self.leaving if not pinned(r, self.inflight)]:
            self.leaving.remove(rec)
            self._release(rec)

    # -- after every event --------------------------------------------------------------------------------
    def check(self) -> None:
        slots = memory_slots(self.all_records(), self.inflight)
        assert len(slots) <= CACHE, f"memory over its bound: {slots}"
        assert len(self.disk) <= DISK, f"disk over its bound: {self.disk}"
        for rec in self.all_records():
            if rec.state is not State.READY and rec.state is not State.DRAINING:
                assert rec.refs == 0, f"a request pinned a version that is not served: {rec}"


OPS = ["request", "fetch_done", "fetch_failed", "load_done", "load_failed", "end", "upstream_change", "tick"]


def decode(code: int) -> tuple:
    """One event from one small integer (cheap to generate, and shrinks towards `request a`)."""
    op, name, flag = OPS[code % 8], NAMES[(code // 8) % len(NAMES)], bool(code // 48 % 2)
    if op in ("request", "upstream_change"):
        return op, name, flag
    if op == "end":
        return op, code // 8
    if op == "tick":
        return op, (0.5, 10.0, 100.0)[code // 8 % 3]
    return op, name


@settings(max_examples=10_000, deadline=None, database=None)
@given(st.lists(st.integers(0, 95), min_size=1, max_size=40))
def test_random_event_sequences_keep_bounds_pins_and_healthy_models(codes):
    replica = Replica()
    for code in codes:
        event = decode(code)
        getattr(replica, event[0])(*event[1:])
        replica.check()


@given(sizes=st.lists(st.tuples(st.integers(0, 500), st.booleans()), max_size=12),
       capacity=st.integers(1, 14), budget=st.integers(1, 2000), need=st.integers(0, 2000))
def test_a_byte_budget_holds_with_the_count_and_evicts_the_oldest_idle_only(sizes, capacity, budget, need):
    slots = [Slot(("m", i), float(i), idle, size) for i, (size, idle) in enumerate(sizes)]
    choice = victims(slots, capacity, ("new", 1), budget, need)
    if choice is None:  # only when even every idle version gone would not make room
        idle = [s for s in slots if s.idle]
        assert len(slots) - len(idle) + 1 > capacity or sum(s.size for s in slots if not s.idle) + need > budget
        return
    left = [s for s in slots if s.key not in choice]
    assert len(left) + 1 <= capacity and sum(s.size for s in left) + need <= budget  # both bounds hold
    assert all(s.idle for s in slots if s.key in choice)  # nothing in use leaves
    idle_by_age = [s.key for s in sorted(slots, key=lambda s: s.last_used) if s.idle]
    assert choice == idle_by_age[:len(choice)]  # the least recently used go first
    if choice:  # and no more than needed: without the last one chosen, a bound would not hold
        kept = left + [s for s in slots if s.key == choice[-1]]
        assert len(kept) + 1 > capacity or sum(s.size for s in kept) + need > budget
