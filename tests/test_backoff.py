"""The one backoff policy (replica/backoff.py), on its own and as each of its users applies it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replica.backoff import backoff


def test_backoff_doubles_up_to_its_ceiling():
    assert [backoff(n, 5, 60) for n in range(0, 7)] == [0, 5, 10, 20, 40, 60, 60]


@given(st.integers(0, 200), st.floats(0.001, 100), st.floats(0.001, 10_000))
def test_backoff_never_shrinks_never_passes_its_ceiling_and_starts_at_its_base(attempts, base, ceiling):
    delay = backoff(attempts, base, ceiling)
    assert 0 <= delay <= ceiling
    assert backoff(attempts + 1, base, ceiling) >= delay
    if attempts == 1:
        assert delay == min(base, ceiling)


def test_each_user_backs_off_by_it():
    from supervisor.arbiter import MAX_RESTART_DELAY, restart_delay
    from workers.gunicorn_conf import MAX_RESPAWN_DELAY, respawn_delay

    assert [restart_delay(n) for n in range(1, 5)] == [0.0, 1.0, 2.0, 4.0]  # the first restart is immediate
    assert restart_delay(100) == MAX_RESTART_DELAY
    assert [respawn_delay(n) for n in range(0, 4)] == [0.0, 0.5, 1.0, 2.0]
    assert respawn_delay(100) == MAX_RESPAWN_DELAY
