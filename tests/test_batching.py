"""The batcher on its own (workers/batching.py): queues per key, the size-or-interval trigger, stacking along
axis 0 and splitting back, and the fallbacks that keep one bad input from failing its batch."""
from __future__ import annotations

import threading
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.batching import Batcher, Failure, run_stacked, stack_key, stackable

W = np.arange(12, dtype=np.float32).reshape(4, 3)


def rowwise(feeds: dict) -> list:
    """A model that maps rows to rows (like an MLP): scores [n, 3] and label [n]."""
    scores = feeds["x"] @ W
    return [scores, scores.argmax(axis=1)]


def submit_all(batcher: Batcher, jobs: list[tuple], run) -> list:
    """Submit every (key, item) from its own thread at once; the outcomes (value or exception) in job order."""
    out: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def one(i: int, key, item) -> None:
        start.wait()
        try:
            out[i] = batcher.submit(key, item, run)
        except Exception as e:
            out[i] = e

    threads = [threading.Thread(target=one, args=(i, k, it)) for i, (k, it) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a submit never returned"
    return out


class Recorder:
    """A run function that records each batch it gets and answers each item with (item, batch size)."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, items: list) -> list:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay)
        return [(item, len(items)) for item in items]


# -- the queue ---------------------------------------------------------------------------------------------------

def test_a_full_batch_runs_at_once_and_each_caller_gets_its_own_answer():
    rec = Recorder()
    batcher = Batcher(max_batch_size=8, batch_interval=60.0)  # only a full batch can run before the test times out
    out = submit_all(batcher, [("k", i) for i in range(8)], rec)
    assert out == [(i, 8) for i in range(8)]
    assert len(rec.batches) == 1 and sorted(rec.batches[0]) == list(range(8))


def test_a_lone_request_runs_after_the_interval():
    batcher = Batcher(max_batch_size=4, batch_interval=0.2)
    started = time.perf_counter()
    assert batcher.submit("k", "x", Recorder()) == ("x", 1)
    assert time.perf_counter() - started >= 0.2


def test_more_requests_than_max_batch_size_make_several_batches_none_over_the_size():
    rec = Recorder(delay=0.05)
    batcher = Batcher(max_batch_size=4, batch_interval=0.05)
    out = submit_all(batcher, [("k", i) for i in range(13)], rec)
    assert [o[0] for o in out] == list(range(13))
    assert all(len(b) <= 4 for b in rec.batches)
    assert sorted(i for b in rec.batches for i in b) == list(range(13))
    assert max(len(b) for b in rec.batches) > 1


def test_keys_never_share_a_batch():
    rec = Recorder()
    batcher = Batcher(max_batch_size=16, batch_interval=0.3)
    jobs = [(("m", i % 3), (i % 3, i)) for i in range(12)]
    out = submit_all(batcher, jobs, rec)
    assert [o[0] for o in out] == [item for _, item in jobs]
    for batch in rec.batches:
        assert len({key for key, _ in batch}) == 1, batch


def test_the_observer_sees_each_batch_size_and_every_wait():
    seen = []
    batcher = Batcher(max_batch_size=3, batch_interval=60.0, observe=lambda key, n, waits: seen.append((key, n, waits)))
    submit_all(batcher, [("k", i) for i in range(3)], Recorder())
    (key, n, waits), = seen
    assert key == "k" and n == 3 and len(waits) == 3 and all(0 <= w < 30 for w in waits)


def test_a_failure_goes_to_its_own_caller_only():
    def run(items):
        return [Failure(ValueError(f"bad {i}")) if i < 0 else i * 10 for i in items]

    out = submit_all(Batcher(max_batch_size=3, batch_interval=60.0), [("k", 1), ("k", -1), ("k", 2)], run)
    assert sorted(o for o in out if isinstance(o, int)) == [10, 20]
    (err,) = [o for o in out if isinstance(o, Exception)]
    assert str(err) == "bad -1"


def test_a_run_that_raises_or_miscounts_fails_every_member_and_the_queue_keeps_working():
    batcher = Batcher(max_batch_size=2, batch_interval=60.0)

    def boom(items):
        raise RuntimeError("boom")

    assert all(isinstance(o, RuntimeError) and str(o) == "boom" for o in submit_all(batcher, [("k", 1), ("k", 2)], boom))
    out = submit_all(batcher, [("k", 1), ("k", 2)], lambda items: items[:1])
    assert all("a batch of 2 requests produced 1 results" in str(o) for o in out)
    assert sorted(submit_all(batcher, [("k", 1), ("k", 2)], Recorder())) == [(1, 2), (2, 2)]


# -- stacking ---------------------------------------------------------------------------------------------------------

def test_stacking_splits_outputs_by_each_items_rows():
    items = [{"x": np.full((n, 4), i, dtype=np.float32)} for i, n in enumerate([1, 3, 2])]
    calls = []

    def run(feeds):
        calls.append(feeds["x"].shape)
        return rowwise(feeds)

    out = run_stacked(items, run)
    assert calls == [(6, 4)]  # one run of every row
    for item, (scores, label) in zip(items, out):
        want_scores, want_label = rowwise(item)
        np.testing.assert_array_equal(scores, want_scores)
        np.testing.assert_array_equal(label, want_label)


def test_stacking_splits_a_mapping_of_outputs():
    items = [{"x": np.ones((1, 4), np.float32)}, {"x": np.zeros((2, 4), np.float32)}]
    out = run_stacked(items, lambda f: {"y": f["x"].sum(axis=1)})
    assert [o["y"].tolist() for o in out] == [[4.0], [0.0, 0.0]]


def test_outputs_that_do_not_follow_the_rows_run_each_item_alone():
    items = [{"x": np.full((1, 4), i, np.float32)} for i in range(3)]
    calls = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        return [np.array([feeds["x"].sum()])]  # one value for the whole input, whatever its rows

    out = run_stacked(items, run)
    assert calls == [3, 1, 1, 1]
    assert [o[0].tolist() for o in out] == [[0.0], [4.0], [8.0]]


def test_a_batched_run_that_raises_is_retried_one_by_one_so_only_the_bad_item_fails():
    items = [{"x": np.array([[1.0]])}, {"x": np.array([[np.nan]])}, {"x": np.array([[3.0]])}]

    def run(feeds):
        if np.isnan(feeds["x"]).any():
            raise ValueError("NaN in the input")
        return [feeds["x"] * 2]

    out = run_stacked(items, run)
    assert out[0][0].tolist() == [[2.0]] and out[2][0].tolist() == [[6.0]]
    assert isinstance(out[1], Failure) and str(out[1].error) == "NaN in the input"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=8))
def test_stacked_answers_equal_unbatched_answers(rows):
    rng = np.random.default_rng(len(rows))
    items = [{"x": rng.standard_normal((n, 4)).astype(np.float32)} for n in rows]
    for item, (scores, label) in zip(items, run_stacked(items, rowwise)):
        want_scores, want_label = rowwise(item)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)  # BLAS may round differently
        np.testing.assert_array_equal(label, want_label)


def test_what_can_be_stacked():
    batch = {"x": True, "y": True}
    assert stackable({"x": np.zeros((2, 4)), "y": np.zeros((2,))}, batch)
    assert not stackable({"x": np.zeros((2, 4)), "y": np.zeros((3,))}, batch)  # rows differ between inputs
    assert not stackable({"x": np.zeros((2, 4))}, {"x": False})  # a fixed first dimension: no batch dimension
    assert not stackable({"x": np.float32(1.0)}, batch)  # a scalar
    assert stack_key({"x": np.zeros((2, 4), np.float32)}) == stack_key({"x": np.ones((7, 4), np.float32)})
    assert stack_key({"x": np.zeros((2, 4), np.float32)}) != stack_key({"x": np.zeros((2, 5), np.float32)})
    assert stack_key({"x": np.zeros((2, 4), np.float32)}) != stack_key({"x": np.zeros((2, 4), np.float64)})
