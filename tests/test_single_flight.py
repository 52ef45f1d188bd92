"""Single flight (replica/single_flight.py): callers who ask while a run is under way share its result."""

from __future__ import annotations

import threading

import pytest

from replica.single_flight import SingleFlight


def test_concurrent_callers_share_one_run_and_its_result():
    flights: SingleFlight[int] = SingleFlight()
    release, runs, results = threading.Event(), [], []

    def work() -> int:
        runs.append(1)
        release.wait(5)
        return 42

    threads = [threading.Thread(target=lambda: results.append(flights.run("k", work))) for _ in range(5)]
    threads[0].start()
    while not flights.running("k"):
        pass
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(5)
    assert runs == [1] and results == [42] * 5
    assert not flights.running("k")  # the next caller runs it afresh
    assert flights.run("k", lambda: 7) == 7


def test_a_failed_run_raises_for_its_waiters_too_and_is_not_remembered():
    flights: SingleFlight[int] = SingleFlight()
    release, errors = threading.Event(), []

    def fail() -> int:
        release.wait(5)
        raise ValueError("boom")

    def call() -> None:
        try:
            flights.run("k", fail)
        except ValueError as e:
            errors.append(str(e))

    owner = threading.Thread(target=call)
    owner.start()
    while not flights.running("k"):
        pass
    waiter = threading.Thread(target=call)
    waiter.start()
    release.set()
    owner.join(5)
    waiter.join(5)
    assert errors == ["boom", "boom"]
    with pytest.raises(ValueError):
        flights.run("k", fail)
