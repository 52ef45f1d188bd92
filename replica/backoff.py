"""The one backoff policy of the replica: how long to wait after a run of failures.

Every retry in the code base waits by this function (a failed download or load, a watcher pass that failed,
a gunicorn or a worker that died young), so they all double the same way up to their own ceiling. It is pure:
the caller counts the failures and owns the clock.
"""

from __future__ import annotations


def backoff(attempts: int, base: float, ceiling: float) -> float:
    """Seconds before trying again after `attempts` failures in a row: `base`, doubling per failure, capped at
    `ceiling`; 0 before any failure."""
    if attempts <= 0:
        return 0.0
    return min(ceiling, base * 2.0 ** (attempts - 1))
