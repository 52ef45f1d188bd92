"""Request framing in the front's event loop (workers.framing) and the board's policies (workers.board): where a
request ends, whatever pieces it arrives in, and when a worker may accept or admit."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from workers.board import BEAT, CONNS, FIELDS, HWM, IN_FLIGHT, PID, READY, Board, may_accept, over_limit, stalled
from workers.framing import HEAD_END, chunked_end, parse_head


def head_of(raw: bytes):
    return parse_head(raw, raw.index(HEAD_END))


def test_content_length_request():
    h = head_of(b"POST /predict?model=a HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
    assert (h.method, h.path, h.content_length, h.chunked, h.ambiguous) == (b"POST", b"/predict", 12, False, False)


def test_no_body_and_header_case():
    h = head_of(b"GET / HTTP/1.1\r\nHOST: x\r\n\r\n")
    assert h.content_length is None and not h.chunked and not h.ambiguous
    assert head_of(b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh:  7 \r\n\r\n").content_length == 7


def test_chunked_and_expect_continue():
    h = head_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
    assert h.chunked and h.expect_continue and not h.ambiguous
    assert not head_of(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue


def test_conflicting_framing_is_ambiguous():
    for raw in (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"):
        assert head_of(raw).ambiguous, raw


def chunked(body: bytes, sizes: list[int], trailers: bytes = b"") -> bytes:
    out, pos = b"", 0
    for size in sizes:
        piece = body[pos:pos + size]
        if not piece:
            break
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        pos += len(piece)
    if pos < len(body):
        out += b"%X\r\n" % (len(body) - pos) + body[pos:] + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"


@given(body=st.binary(max_size=300), sizes=st.lists(st.integers(1, 64), max_size=8),
       trailers=st.sampled_from([b"", b"X-Sum: 1\r\n", b"A: 1\r\nB: 2\r\n"]), cut=st.integers(0, 10_000),
       tail=st.binary(max_size=20))
def test_chunked_end_is_found_exactly_whatever_the_split(body, sizes, trailers, cut, tail):
    encoded = chunked(body, sizes, trailers)
    stream = encoded + tail  # a pipelined next request may follow
    cut = min(cut, len(stream))
    end, resume, bad = chunked_end(stream[:cut], 0)
    assert not bad
    if cut < len(encoded):
        assert end is None
        end, _, bad = chunked_end(stream, resume)  # carries on from where the first scan stopped
    assert not bad and end == len(encoded)


def test_malformed_chunk_is_bad():
    assert chunked_end(b"zz\r\nabc\r\n", 0)[2]
    assert chunked_end(b"3\r\nabcd\r\n", 0)[2]
    assert chunked_end(b"0x3\r\nabc\r\n0\r\n\r\n", 0)[2]


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
