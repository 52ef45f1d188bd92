"""Calls into user code with a deadline (workers/user_calls.py), and the policy that retires a worker whose
request threads are stuck in it (workers/board.py)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, strategies as st

from workers.board import should_retire
from workers.user_calls import Abandoned, DeadlineExceeded, call_with_deadline


def test_a_call_that_returns_in_time_gives_its_result_or_its_exception():
    abandoned = Abandoned()
    assert call_with_deadline(lambda: 42, 5, "k", "answer", abandoned) == 42

    def boom():
        raise ValueError("bad model")

    with pytest.raises(ValueError, match="bad model"):
        call_with_deadline(boom, 5, "k", "boom", abandoned)
    assert abandoned.list() == [] and abandoned.running("k") is None


def test_a_call_past_its_deadline_is_left_running_listed_and_its_late_result_handed_over():
    abandoned, release, late = Abandoned(), threading.Event(), []
    handed = threading.Event()

    def slow():
        release.wait(10)
        return "model"

    def on_late(value):
        late.append(value)
        handed.set()

    with pytest.raises(DeadlineExceeded, match="did not return within 0.1 s"):
        call_with_deadline(slow, 0.1, ("m", 1), "load of m 1", abandoned, on_late)
    assert abandoned.running(("m", 1)) is not None
    assert [what for what, _ in abandoned.list()] == ["load of m 1"]
    release.set()
    assert handed.wait(5)
    assert late == ["model"] and abandoned.list() == []


@given(threads=st.integers(1, 64), stuck=st.integers(0, 64))
def test_a_worker_retires_once_half_its_threads_are_stuck_and_never_for_none(threads, stuck):
    stuck = min(stuck, threads)
    retire = should_retire(stuck, threads)
    assert retire == (stuck > 0 and stuck >= threads / 2)
    if stuck == threads and stuck > 0:
        assert retire  # every thread stuck: nothing else can get the worker back
    if stuck < threads:
        assert retire <= should_retire(stuck + 1, threads)  # more stuck never un-retires
