"""The supervisor's version records (supervisor/versions.py): the state machine on its own, then the real watcher
and disk cache driven through random event sequences (hypothesis).

The sequences are the things that happen to a replica with model caching: upstream uploads, rewrites and
deletions, watcher passes, downloads that fail (the upstream down) or stall (the download stops mid-file),
a full state disk and its end, workers' ensure and release, and loads that fail. After every step: a version
the catalogue lists is never answered "not upstream", the disk bound holds, every failure carries its
fingerprint, reason and retry time, every transition taken was legal, and the table's disk index is what the
disk tree really holds.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from replica.disktree import DiskTree
from replica.spec import load_spec
from supervisor import versions as versions_module
from supervisor.catalogue import Catalogue
from replica.protocol import LoadFailure
from supervisor.disk_cache import DiskCache
from supervisor.tree_writes import DiskFull
from supervisor.upstream import LocalDiskError, LocalUpstream, UpstreamError
from supervisor.versions import LEGAL, IllegalTransition, State, VersionTable
from supervisor.watcher import Watcher
from tests.helpers import sync

# -- the state machine alone ---------------------------------------------------------------------------------


def test_every_illegal_transition_is_refused():
    for frm, to in itertools.product(State, State):
        table = VersionTable()
        key = ("m", 1)
        path = {State.LISTED: [], State.DOWNLOADING: [State.DOWNLOADING],
                State.INSTALLING: [State.DOWNLOADING, State.INSTALLING], State.FAILED: [State.DOWNLOADING],
                State.ON_DISK: [State.DOWNLOADING, State.INSTALLING]}[frm]
        for step in path:
            table.transition(key, step)
        if frm is State.FAILED:
            table.fail(key, "fp", "down", now=0.0, base=1.0)
        if frm is State.ON_DISK:
            table.transition(key, State.ON_DISK, disk="fp")
        assert table.state(key) is frm
        if to in LEGAL[frm]:
            continue
        with pytest.raises(IllegalTransition):
            table.transition(key, to, disk="fp")


def test_a_failure_backs_off_per_fingerprint_and_a_new_fingerprint_clears_it():
    table = VersionTable()
    key = ("m", 1)
    delays = []
    for _ in range(6):
        table.transition(key, State.DOWNLOADING)
        rec = table.fail(key, "fp1", "down", now=100.0, base=10.0)
        delays.append(rec.retry_at - 100.0)
    assert delays == [10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    assert table.backing_off(key, "fp1", now=101.0) is rec
    assert table.backing_off(key, "fp2", now=101.0) is None  # another fingerprint is tried at once
    assert not table.clear_stale(key, "fp1")
    assert table.clear_stale(key, "fp2") and table.state(key) is State.LISTED and table.get(key) is None


def test_a_failed_update_keeps_the_copy_on_disk():
    table = VersionTable()
    key = ("m", 1)
    table.adopt(key, "old")
    table.transition(key, State.DOWNLOADING)
    table.fail(key, "new", "down", now=0.0, base=1.0)
    assert table.disk == {"m": {1: "old"}} and table.state(key) is State.FAILED
    table.clear_stale(key, "old")  # upstream went back to the copy on disk
    assert table.state(key) is State.ON_DISK and table.get(key).error is None


# -- the real watcher and disk cache, driven at random ------------------------------------------------------------

NAMES = ["a", "b", "c", "d"]
CAPACITY = 2
WORKERS = [os.getpid()]  # holds need a live pid: this process stands in for the worker


class FaultyUpstream(LocalUpstream):
    """A local upstream whose downloads can be made to fail (S3 down), stall (the copy stops halfway), or hit
    a full state disk."""

    mode = "ok"

    def fetch(self, obj, dest, progress=None):
        if FaultyUpstream.mode == "down":
            raise UpstreamError("upstream down", "upstream down")
        if FaultyUpstream.mode == "full":
            raise LocalDiskError("disk full at /somewhere", "the state directory's disk refused the download")
        if FaultyUpstream.mode == "stall":
            dest.write_bytes(b"partial")
            raise UpstreamError("no byte for 30 s", "the download stalled")
        return super().fetch(obj, dest, progress)


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        (self.tmp / "predictor.py").write_text("")
        (self.tmp / "models").mkdir()
        spec = {"name": "m", "predictor": {"type": "python", "path": "predictor.py",
                                           "models": {"dir": "models", "cache_size": CAPACITY,
                                                      "disk_cache_size": CAPACITY}}}
        (self.tmp / "api.yaml").write_text(yaml.safe_dump(spec))
        predictor = load_spec(self.tmp / "api.yaml").predictor
        upstreams = [(s, FaultyUpstream(s.url)) for s in predictor.sources]
        self.watcher = Watcher(DiskTree(self.tmp / "state", self.tmp / "run"), Catalogue(predictor, upstreams),
                               poll_interval=0.01, download_threads=2, prefetch=False)
        self.cache = DiskCache(self.watcher, CAPACITY)
        self.watcher.start()
        self.seq = 0
        self.mtime = 1_600_000_000_000_000_000
        self.transitions: list[tuple[State, State]] = []
        FaultyUpstream.mode = "ok"
        table = self.watcher.versions
        real = table.transition

        def watched(key, to, **kw):
            frm = table.state(key)
            rec = real(key, to, **kw)
            self.transitions.append((frm, to))
            return rec

        table.transition = watched

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- upstream ---------------------------------------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), version=st.integers(1, 2), data=st.binary(min_size=1, max_size=8))
    def upload(self, name, version, data):
        path = self.tmp / "models" / name / str(version) / "model.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.mtime += 1_000_000_000
        os.utime(path, ns=(self.mtime, self.mtime))

    @rule(name=st.sampled_from(NAMES), version=st.integers(1, 2), data=st.binary(min_size=1, max_size=8))
    def upload_then_pass(self, name, version, data):
        self.upload(name, version, data)
        sync(self.watcher)

    @rule(name=st.sampled_from(NAMES), version=st.integers(1, 2))
    def delete(self, name, version):
        shutil.rmtree(self.tmp / "models" / name / str(version), ignore_errors=True)
        if (self.tmp / "models" / name).exists() and not any((self.tmp / "models" / name).iterdir()):
            (self.tmp / "models" / name).rmdir()

    @rule(mode=st.sampled_from(["ok", "ok", "down", "stall", "full"]))
    def upstream_or_disk(self, mode):
        FaultyUpstream.mode = mode

    @rule()
    def watcher_pass(self):
        sync(self.watcher)

    @rule()
    def time_passes(self):
        """Every retry time comes due (the backoff is the policy's business, tested on its own)."""
        with self.watcher.lock:
            for rec in self.watcher.versions.in_state(State.FAILED):
                rec.retry_at = 1.0  # long past

    # -- a worker ---------------------------------------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), version=st.integers(1, 2))
    def ensure(self, name, version):
        entry = self.watcher.catalogue.models.get(name)
        listing = entry.listing.versions.get(version) if entry is not None else None
        self.seq += 1
        try:
            fetched = self.cache.ensure(WORKERS[0], name, version, self.seq)
        except DiskFull:
            assert self._held_count() >= CAPACITY
            return
        event("ensure: " + ("on disk" if fetched.error is None else
                            "not upstream" if "not upstream" in fetched.error else fetched.error.split("(")[0]))
        if listing is not None and listing.error is None:
            assert fetched.error is None or "not upstream" not in fetched.error, fetched
            if fetched.error is not None:  # a failure: the reason and when it is tried again
                rec = self.watcher.versions.get((name, version))
                assert fetched.retry_after is not None or "changed upstream" in fetched.error, fetched
                assert rec is not None and rec.state is State.FAILED
        if listing is None:
            assert fetched.error is not None and "not upstream" in fetched.error

    @rule(name=st.sampled_from(NAMES), version=st.integers(1, 2), broken=st.booleans())  # broken: its load failed
    def release(self, name, version, broken):
        self.seq += 1
        self.cache.release(WORKERS[0], name, version, self.seq, float(self.seq),
                           LoadFailure("ValueError: truncated", 30.0) if broken else None)
        # a broken copy's restore runs on its own thread: wait for it, so the next step sees a settled disk
        for t in [t for t in __import__("threading").enumerate() if t.name == "disk-restore"]:
            t.join(10)

    def _held_count(self) -> int:
        with self.cache._lock:
            return sum(1 for key in list(self.cache._holds) if self.cache.held(key))

    # -- after every step ---------------------------------------------------------------------------------------
    @invariant()
    def disk_bound_holds(self):
        on_disk = [(n, v) for n, vs in self.watcher.installed.items() for v in vs]
        assert len(on_disk) <= CAPACITY, on_disk

    @invariant()
    def disk_index_is_the_disk(self):
        assert self.watcher.installed == self.watcher.tree.installed()

    @invariant()
    def failures_carry_fingerprint_reason_and_retry_time(self):
        for rec in self.watcher.versions:
            assert rec.state in (State.DOWNLOADING, State.INSTALLING, State.ON_DISK, State.FAILED)
            assert rec.state not in (State.DOWNLOADING, State.INSTALLING), "nothing is in flight between steps"
            if rec.state is State.FAILED:
                assert rec.failed_fingerprint and rec.error and rec.retry_at > 0, rec
            if rec.state is State.ON_DISK:
                assert rec.disk is not None and rec.error is None

    @invariant()
    def failures_are_published_with_their_retry_time(self):
        status = self.watcher.status()
        for rec in self.watcher.versions.in_state(State.FAILED):
            row = status.get(rec.name, {}).get("versions", {}).get(str(rec.version))
            assert row is not None and row["error"] and row["retry_at"] == rec.retry_at, (rec, row)

    @invariant()
    def every_transition_was_legal(self):
        for frm, to in self.transitions:
            assert to in versions_module.LEGAL[frm], (frm, to)


Lifecycle.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
test_lifecycle = Lifecycle.TestCase
