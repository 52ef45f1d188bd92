"""One record per model version in the supervisor, with an explicit state and checked transitions.

The supervisor's view of a version (is a copy on disk, which one, is one being fetched, did the last try fail,
when is it tried again) lives in one `VersionRecord`, changed only through `VersionTable.transition`, which
refuses a move the state machine does not allow. TF Serving's loader harness keeps one such record per
servable version; this is its counterpart for the disk tier.

States (a version with no record is LISTED: upstream, or known, with nothing local and no failure)::

    LISTED ──> DOWNLOADING ──> INSTALLING ──> ON_DISK ──> (LISTED: evicted or removed)
                  │   ^             │             │
                  v   │             v             v
                 FAILED <───────────┘        DOWNLOADING (an update; the old copy serves meanwhile)

A failure is always tied to the fingerprint that failed, a reason and a retry time. It never hides the version:
a worker asking for it is told the reason and when it is tried again, and a different fingerprint upstream
clears it at once (`clear_stale`). Only the table's `disk` index says what is on disk; it changes with the
states, never apart from them.

The table does no I/O and takes no lock of its own: the watcher calls it under its bookkeeping lock.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Iterator

from replica.backoff import backoff

Key = tuple[str, int]

DOWNLOAD_RETRY_CEILING = 600.0  # a version that keeps failing is still tried again at least this often


class State(enum.Enum):
    LISTED = "listed"  # nothing local (the table keeps no record for it)
    DOWNLOADING = "downloading"  # fetching into a staging folder; a previous copy may still be on disk
    INSTALLING = "installing"  # downloaded; counts against the disk bound while it moves into place
    ON_DISK = "on_disk"  # the disk copy is the upstream fingerprint it was fetched as
    FAILED = "failed"  # the last fetch of `failed_fingerprint` failed; tried again at `retry_at`


LEGAL: dict[State, frozenset[State]] = {
    State.LISTED: frozenset({State.DOWNLOADING, State.ON_DISK}),  # ON_DISK: adopted from a previous run
    State.DOWNLOADING: frozenset({State.INSTALLING, State.FAILED, State.ON_DISK, State.LISTED}),
    State.INSTALLING: frozenset({State.ON_DISK, State.FAILED, State.LISTED}),
    State.ON_DISK: frozenset({State.DOWNLOADING, State.LISTED, State.FAILED}),
    State.FAILED: frozenset({State.DOWNLOADING, State.ON_DISK, State.LISTED}),
}


class IllegalTransition(RuntimeError):
    """A move the state machine does not allow: a bug in the caller, never a property of the version."""


@dataclass(slots=True)
class VersionRecord:
    name: str
    version: int
    state: State = State.LISTED
    disk: str | None = None  # fingerprint of the copy on disk, or None
    error: str | None = None  # why the last fetch failed (FAILED), for clients and /v1/models
    failed_fingerprint: str | None = None  # the upstream fingerprint that failed
    failures: int = 0  # failed fetches of that fingerprint in a row, for the backoff
    retry_at: float = 0.0  # wall clock: when a failed fetch is tried again

    @property
    def key(self) -> Key:
        return (self.name, self.version)


class VersionTable:
    """Every version with something local: a disk copy, a fetch under way or a failure."""

    def __init__(self) -> None:
        self._records: dict[Key, VersionRecord] = {}
        self.disk: dict[str, dict[int, str]] = {}  # name -> version -> fingerprint on disk (derived, kept in step)

    # -- reading ------------------------------------------------------------------------------------------------
    def get(self, key: Key) -> VersionRecord | None:
        return self._records.get(key)

    def state(self, key: Key) -> State:
        rec = self._records.get(key)
        return rec.state if rec is not None else State.LISTED

    def __iter__(self) -> Iterator[VersionRecord]:
        return iter(list(self._records.values()))

    def in_state(self, *states: State) -> list[VersionRecord]:
        return [r for r in self._records.values() if r.state in states]

    def backing_off(self, key: Key, fingerprint: str, now: float) -> VersionRecord | None:
        """The failure that keeps `fingerprint` from being fetched again before its retry time, or None."""
        rec = self._records.get(key)
        if rec is not None and rec.state is State.FAILED and rec.failed_fingerprint == fingerprint \
                and now < rec.retry_at:
            return rec
        return None

    # -- the one way to change a record ---------------------------------------------------------------------
    def transition(self, key: Key, to: State, *, disk: str | None | type[...] = ...) -> VersionRecord:
        """Move `key` to state `to`, refusing an illegal move. `disk` (a fingerprint or None) says what is on
        disk after the move, when the move changes it. Entering LISTED with nothing on disk drops the record."""
        rec = self._records.get(key)
        frm = rec.state if rec is not None else State.LISTED
        if to not in LEGAL[frm]:
            raise IllegalTransition(f"model {key[0]} version {key[1]}: {frm.value} -> {to.value}")
        if rec is None:
            rec = self._records[key] = VersionRecord(*key)
        rec.state = to
        if disk is not ...:
            self._set_disk(rec, disk)
        if to is State.ON_DISK and rec.disk is None:
            raise IllegalTransition(f"model {key[0]} version {key[1]}: on disk without a copy")
        if to is State.ON_DISK:  # a failure lasts until a fetch succeeds or upstream changes
            rec.error, rec.failed_fingerprint, rec.failures, rec.retry_at = None, None, 0, 0.0
        if to is State.LISTED:
            if rec.disk is not None:
                raise IllegalTransition(f"model {key[0]} version {key[1]}: listed with a copy on disk")
            del self._records[key]
        return rec

    def fail(self, key: Key, fingerprint: str, error: str, now: float, base: float,
             retry_after: float | None = None) -> VersionRecord:
        """The fetch (or the load) of `fingerprint` failed: FAILED with the reason and the retry time, after
        `retry_after` seconds when the caller knows it, else by the backoff policy per failure of the same
        fingerprint (a new fingerprint starts again at `base`)."""
        rec = self._records.get(key)
        same = rec is not None and rec.failed_fingerprint == fingerprint
        failures = rec.failures + 1 if same else 1
        rec = self.transition(key, State.FAILED)
        rec.error, rec.failed_fingerprint, rec.failures = error, fingerprint, failures
        rec.retry_at = now + (retry_after if retry_after is not None else backoff(failures, base, DOWNLOAD_RETRY_CEILING))
        return rec

    def back_to_rest(self, key: Key) -> VersionRecord | None:
        """A fetch that ended without a result (the replica stopping, the object changing meanwhile): ON_DISK
        when a copy is there, else LISTED; a failure recorded before the fetch is kept."""
        rec = self._records.get(key)
        if rec is None or rec.state not in (State.DOWNLOADING, State.INSTALLING):
            return rec
        if rec.failed_fingerprint is not None:
            return self.transition(key, State.FAILED)
        return self.transition(key, State.ON_DISK if rec.disk is not None else State.LISTED)

    def clear_stale(self, key: Key, upstream: str | None) -> bool:
        """Forget a failure once upstream holds a different fingerprint (a new upload) or no longer holds the
        version at all; True when one was cleared."""
        rec = self._records.get(key)
        if rec is None or rec.state is not State.FAILED or rec.failed_fingerprint == upstream:
            return False
        self.transition(key, State.ON_DISK if rec.disk is not None else State.LISTED)
        return True

    def forget_disk(self, key: Key) -> None:
        """The copy leaves the disk (evicted, removed upstream, or the folder lost): a failure stays recorded."""
        rec = self._records.get(key)
        if rec is None or rec.disk is None:
            return
        if rec.state is State.FAILED:
            self._set_disk(rec, None)
        elif rec.state is State.ON_DISK:
            self.transition(key, State.LISTED, disk=None)
        else:  # an update in flight: its install puts the new copy in place
            self._set_disk(rec, None)

    def reconcile_disk(self, on_disk: dict[str, dict[int, str]]) -> int:
        """Make the disk index what the disk really holds (after the state directory was lost and made
        again): copies no longer there are forgotten, copies found are adopted. Return how many were lost."""
        lost = 0
        for rec in list(self._records.values()):
            if rec.disk is not None and on_disk.get(rec.name, {}).get(rec.version) != rec.disk:
                self.forget_disk(rec.key)
                lost += 1
        for name, versions in on_disk.items():
            for version, fingerprint in versions.items():
                rec = self._records.get((name, version))
                if rec is None:
                    self.adopt((name, version), fingerprint)
                elif rec.disk is None:
                    self._set_disk(rec, fingerprint)
        return lost

    def adopt(self, key: Key, fingerprint: str) -> None:
        """A copy found on disk at start-up (a previous run's)."""
        self.transition(key, State.ON_DISK, disk=fingerprint)

    def _set_disk(self, rec: VersionRecord, fingerprint: str | None) -> None:
        rec.disk = fingerprint
        if fingerprint is None:
            versions = self.disk.get(rec.name)
            if versions is not None:
                versions.pop(rec.version, None)
                if not versions:
                    del self.disk[rec.name]
        else:
            self.disk.setdefault(rec.name, {})[rec.version] = fingerprint


def retry_in(rec: VersionRecord, now: float) -> int:
    """Whole seconds until a failed version is tried again (at least 1), for a Retry-After header."""
    return max(1, math.ceil(rec.retry_at - now))
