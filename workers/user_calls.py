"""Calling user code with a deadline.

A Python thread cannot be killed, so a call into user code that never returns (a `load_model` waiting on a
lock, a socket without a timeout) can only be left behind: the call runs on a daemon thread of its own, the
caller waits at most its deadline, and what the abandoned call returns later (if ever) is handed to `late`
instead of being used, so a result nobody waits for any more is released rather than served.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable


class DeadlineExceeded(Exception):
    """The call did not return in time; it goes on, abandoned, on its own thread."""

    def __init__(self, seconds: float):
        super().__init__(f"did not return within {seconds:g} s")
        self.seconds = seconds


class Abandoned:
    """The calls left behind in this process, for health and status: what each is and since when, by a key
    the caller chooses (so that it can refuse to start the same call again while one still runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, tuple[str, float]] = {}

    def add(self, key: Hashable, what: str) -> None:
        with self._lock:
            self._calls[key] = (what, time.time())

    def done(self, key: Hashable) -> None:
        with self._lock:
            self._calls.pop(key, None)

    def running(self, key: Hashable) -> float | None:
        """Since when the call under `key` runs past its deadline, or None."""
        with self._lock:
            call = self._calls.get(key)
            return call[1] if call else None

    def list(self) -> list[tuple[str, float]]:
        """(what, since) of each call still running past its deadline, oldest first."""
        with self._lock:
            return sorted(self._calls.values(), key=lambda c: c[1])


def call_with_deadline(fn: Callable[[], Any], seconds: float, key: Hashable, what: str, abandoned: Abandoned,
                       late: Callable[[Any], None] | None = None) -> Any:
    """Run `fn()` on a thread of its own and return its result, or raise what it raised; past `seconds`, raise
    DeadlineExceeded and leave it running, listed in `abandoned` under `key` until it ends (then `late` gets
    its result)."""
    box: dict[str, Any] = {}
    lock = threading.Lock()
    finished = threading.Event()

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who decides
            box["error"] = e
        with lock:
            finished.set()
            left = "abandoned" in box
        if left:
            abandoned.done(key)
            if late is not None and "value" in box:
                late(box["value"])

    threading.Thread(target=body, name=f"user-call {what}", daemon=True).start()
    if not finished.wait(seconds):
        with lock:
            if not finished.is_set():
                box["abandoned"] = True
                abandoned.add(key, what)
                raise DeadlineExceeded(seconds)
    if "error" in box:
        raise box["error"]
    return box["value"]
