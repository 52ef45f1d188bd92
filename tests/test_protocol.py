"""The supervisor-worker protocol's messages (replica/protocol.py): every message round-trips, and a body that
does not follow the protocol is a ProtocolError (a 400), never something else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica import protocol
from replica.protocol import EnsureReply, EnsureRequest, LoadFailure, ProtocolError, Release

names = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=20)
failures = st.none() | st.builds(LoadFailure, st.text(max_size=40),
                                 st.floats(min_value=0, max_value=1e6, allow_nan=False))
releases = st.builds(Release, names, st.integers(0, 2**63 - 1), st.integers(0, 2**31),
                     st.floats(min_value=0, max_value=2e9, allow_nan=False), failures)


@given(st.builds(EnsureRequest, names, st.integers(0, 2**63 - 1), st.integers(0, 2**31),
                 st.lists(releases, max_size=5).map(tuple)))
def test_an_ensure_round_trips_through_json(req):
    assert protocol.parse_ensure(json.loads(json.dumps(protocol.ensure_body(req)))) == req


@given(st.builds(EnsureReply, st.none() | st.text(max_size=40), st.booleans(), st.none() | st.integers(1, 600)))
def test_a_reply_round_trips_through_json(reply):
    assert protocol.parse_reply(json.loads(json.dumps(protocol.reply_body(reply)))) == reply


def test_a_release_from_an_older_worker_without_a_failure_field_is_read():
    assert protocol.decode_release(["m", 1, 3, 10.0]) == Release("m", 1, 3, 10.0, None)


@pytest.mark.parametrize("body", [
    None, [], {}, {"name": "m"}, {"name": 1, "version": 1, "seq": 1}, {"name": "m", "version": "1", "seq": 1},
    {"name": "m", "version": True, "seq": 1}, {"name": "m", "version": 1, "seq": 1, "releases": "x"},
    {"name": "m", "version": 1, "seq": 1, "releases": [["m"]]},
    {"name": "m", "version": 1, "seq": 1, "releases": [["m", 1, 1, 0.0, {"error": "x"}]]},
])
def test_a_body_off_the_protocol_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        protocol.parse_ensure(body)
