"""The board's policies (workers.board): when a worker may accept a connection or admit a request, and which
workers count as alive."""

from __future__ import annotations

import os

from workers.board import BEAT, CONNS, FIELDS, HWM, IN_FLIGHT, PID, READY, Board, may_accept, over_limit, stalled


def test_least_connections_policy():
    assert may_accept(0, True, [])
    assert may_accept(3, True, [(3, True), (5, True)])
    assert not may_accept(4, True, [(3, True), (5, True)])
    assert over_limit(2, 2) and not over_limit(1, 2)


def test_a_worker_still_loading_leaves_connections_to_ready_ones():
    assert not may_accept(0, False, [(6, True)])  # a replacement does not take what a ready worker can answer
    assert may_accept(6, True, [(0, False)])  # and its zero connections do not hold back the ready one
    assert may_accept(0, False, [(0, False)])  # while none is ready, least connections among all
    assert not may_accept(1, False, [(0, False)])


def test_board_slots_are_shared_and_stale_slots_do_not_count(tmp_path):
    board = Board.create(str(tmp_path))
    mine = board.claim()
    assert mine == 0
    board.beat(10_000)
    board.set_counts(3, 2, True)
    # Another worker's slot, as its process would have written it: pid, heartbeat (ms), connections, in flight.
    for field, value in zip((PID, BEAT, CONNS, IN_FLIGHT, READY), (12345, 10_500, 1, 4, 1)):
        board.words[FIELDS + field] = value
    board.words[HWM] = 2
    assert board.others(11_000) == [(1, True)]
    assert board.total_in_flight(11_000) == 6
    assert board.others(13_000) == []  # its heartbeat is over two seconds old: a dead or frozen worker
    assert board.total_in_flight(13_000) == 2


def test_stalled_names_ready_workers_silent_too_long_only():
    rows = [(101, 10_000, True),   # beat 0.5 s ago: alive
            (102, 4_000, True),    # silent 6.5 s: hung
            (103, 1_000, False),   # still starting: the master's boot timeout applies, not liveness
            (0, 0, False)]         # a slot never claimed
    assert stalled(rows, 10_500, 5_000) == [(102, 6_500)]
    assert stalled(rows, 10_500, 7_000) == []


def test_board_rows_show_each_claimed_slot():
    board = Board.create()
    board.claim()
    board.beat(1234)
    board.set_counts(conns=2, in_flight=1, ready=True)
    assert board.rows() == [(os.getpid(), 1234, True)]
