"""Quarantine entries from a dead worker's load marks: how it died, how long, and when a copy is free again."""

from __future__ import annotations

import os
import signal
import threading

from replica import quarantine


def _status(*, code: int | None = None, sig: int | None = None) -> int:
    return (code << 8) if code is not None else sig


def test_death_names_signals_and_exit_codes_and_ignores_stops():
    assert quarantine.death(_status(sig=signal.SIGSEGV)) == "signal SIGSEGV"
    assert quarantine.death(_status(sig=signal.SIGKILL)) == "signal SIGKILL"
    assert quarantine.death(_status(code=3)) == "exit code 3"
    assert quarantine.death(_status(code=0)) is None
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        assert quarantine.death(_status(sig=stop)) is None


def test_marks_follow_the_loads_under_way(tmp_path):
    marks = quarantine.LoadMarks(tmp_path)
    inside = threading.Event()
    release = threading.Event()

    def load():
        with marks.loading("b", 2, "fp-b"):
            inside.set()
            release.wait(5)

    t = threading.Thread(target=load)
    with marks.loading("a", 1, "fp-a"):
        t.start()
        assert inside.wait(5)
        seen = {m["name"] for m in quarantine.take_marks(tmp_path, os.getpid())}
        assert seen == {"a", "b"}
        release.set()
        t.join()
    assert not (tmp_path / f"{os.getpid()}.loading").exists()
    assert quarantine.take_marks(tmp_path, os.getpid()) == []


def test_deaths_of_one_copy_double_its_quarantine_and_a_new_copy_is_free(tmp_path):
    mark = [{"name": "m", "version": 1, "fingerprint": "fp1"}]
    now = 1000.0
    (_, _, first), = quarantine.quarantine(tmp_path, mark, "the worker died: signal SIGSEGV", now)
    (_, _, second), = quarantine.quarantine(tmp_path, mark, "the worker died: signal SIGSEGV", now)
    assert second == 2 * first
    reason, left = quarantine.quarantined(tmp_path, "m", 1, "fp1", now + 1)
    assert "SIGSEGV" in reason and left == second - 1
    assert quarantine.quarantined(tmp_path, "m", 1, "fp2", now + 1) is None  # a new upload is loaded at once
    assert quarantine.quarantined(tmp_path, "m", 1, "fp1", now + second + 1) is None  # the backoff expired
    assert quarantine.quarantined(tmp_path, "m", 2, "fp1", now + 1) is None
    (_, _, fresh), = quarantine.quarantine(tmp_path, [{"name": "m", "version": 1, "fingerprint": "fp2"}], "x", now)
    assert fresh == first


def test_the_quarantines_in_force_are_listed_with_their_reason_and_time_left(tmp_path):
    now = 1000.0
    quarantine.quarantine(tmp_path, [{"name": "a/b", "version": 3, "fingerprint": "fp"}], "signal SIGKILL", now)
    held = quarantine.held(tmp_path, now + 10)
    assert list(held) == [("a/b", 3)]  # a name with a slash splits at its last one
    assert held[("a/b", 3)]["reason"] == "signal SIGKILL" and held[("a/b", 3)]["fingerprint"] == "fp"
    assert held[("a/b", 3)]["seconds_left"] == quarantine.BASE_SECONDS - 10
    assert quarantine.held(tmp_path, now + quarantine.BASE_SECONDS + 1) == {}
    assert quarantine.held(tmp_path / "missing", now) == {}
