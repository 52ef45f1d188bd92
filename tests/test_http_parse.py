"""Requests parsed once in the front's event loop (workers.http_parse): where each request ends whatever pieces
it arrives in, pipelined requests one after another, and every malformed or oversized one refused with the
status a client should see."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.http_parse import BadRequest, Limits, RequestParser

LIMITS = Limits(request_line=4094, fields=100, field_size=8190, body=1 << 20)


def feed(*pieces: bytes, limits: Limits = LIMITS) -> RequestParser:
    parser = RequestParser(limits)
    for piece in pieces:
        parser.feed(piece)
    return parser


def refused(*pieces: bytes, limits: Limits = LIMITS) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        feed(*pieces, limits=limits)
    return info.value


def test_content_length_request_is_split_into_path_query_headers_and_body():
    p = feed(b"POST /predict?model=a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 12\r\n\r\n{\"x\": [1,2]}")
    req = p.ready.popleft()
    assert (req.method, req.path, req.query, req.version) == ("POST", b"/predict", b"model=a", "1.1")
    assert b"".join(req.body) == b'{"x": [1,2]}' and req.body_size == 12 and req.content_length == 12
    assert (b"Host", b"x") in req.headers and req.keep_alive
    assert p.buffered == 12 and not p.started and not p.in_body


def test_http_1_0_without_keep_alive_closes_and_a_fragment_is_dropped():
    req = feed(b"GET /v1/models#top HTTP/1.0\r\n\r\n").ready.popleft()
    assert (req.path, req.version, req.keep_alive) == (b"/v1/models", "1.0", False)
    assert not feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").ready.popleft().keep_alive


def test_pipelined_requests_queue_in_order_and_a_partial_one_waits():
    p = feed(b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HT")
    assert [r.path for r in p.ready] == [b"/a", b"/b"]
    assert p.started and not p.in_body
    p.feed(b"TP/1.1\r\n\r\n")
    assert [r.path for r in p.ready] == [b"/a", b"/b", b"/c"]


@st.composite
def chunked(draw):
    body = draw(st.binary(max_size=300))
    sizes, rest = [], len(body)
    while rest:
        n = draw(st.integers(1, rest))
        sizes.append(n)
        rest -= n
    trailers = draw(st.lists(st.sampled_from([b"X-Sum: 1", b"Digest: abc"]), max_size=2))
    out, at = bytearray(), 0
    for n in sizes:
        out += b"%x\r\n" % n + body[at:at + n] + b"\r\n"
        at += n
    out += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    return body, bytes(out)


@given(chunked(), st.lists(st.integers(1, 50), max_size=20))
def test_a_chunked_body_is_decoded_exactly_whatever_pieces_it_arrives_in(case, cuts):
    body, encoded = case
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded + b"GET /next HTTP/1.1\r\n\r\n"
    parser, at = RequestParser(LIMITS), 0
    for cut in cuts:
        parser.feed(raw[at:at + cut])
        at += cut
    parser.feed(raw[at:])
    first, second = parser.ready
    assert b"".join(first.body) == body and second.path == b"/next"
    assert all(name.lower() != b"x-sum" for name, _ in first.headers)  # trailers are framing, not headers


@pytest.mark.parametrize("size", [b"1_0", b" 10", b"+a", b"0x10", b"-1", b"ffffffffffffffffffff", b"10\r"])
def test_a_malformed_chunk_size_is_a_400(size):
    e = refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n")
    assert e.status == 400


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad header\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
    b"GET / HTTP/1.1\nX: a\n\n",
    b"NOT A REQUEST\r\n\r\n",
    b"GET http://replica/predict HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
])
def test_malformed_or_non_origin_form_requests_are_a_400(head):
    assert refused(head).status == 400


def test_requests_before_a_malformed_one_are_kept_to_be_answered_first():
    parser = RequestParser(LIMITS)
    with pytest.raises(BadRequest):
        parser.feed(b"GET /first HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nBad\r\n\r\n")
    assert [r.path for r in parser.ready] == [b"/first"]


def test_limits_answer_413_414_417_and_431():
    assert refused(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n").status == 414
    assert refused(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n").status == 431
    assert refused(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n").status == 431
    assert refused(b"GET / HTTP/1.1\r\nX-Endless: ", b"a" * 900_000).status == 431
    assert refused(b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n").status == 413
    e = refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"100000\r\n" + b"a" * 0x100000 + b"\r\n",
                b"1\r\na\r\n")
    assert e.status == 413 and "--max-request-size" in e.message
    assert refused(b"POST / HTTP/1.1\r\nExpect: something\r\nContent-Length: 1\r\n\r\n").status == 417


def test_expect_100_continue_is_wanted_until_the_body_comes():
    p = feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert p.in_body and p.continue_wanted
    p.feed(b"abc")
    assert not p.continue_wanted and p.ready
