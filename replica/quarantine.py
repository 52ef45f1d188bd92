"""Versions whose load killed a worker: quarantined, so no request loads them again until they change upstream
or a backoff expires.

A `load_model` that segfaults, calls `os._exit`, or is OOM-killed takes its worker with it, and the worker can
record nothing once it is dead. So a worker marks each load it starts in a file of its own in the runtime
folder's `workers/` (`<pid>.loading`, removed when the load returns), and the gunicorn master, which reaps the
worker and knows how it died, turns the marks a dead worker left into quarantine entries in `quarantine.json`
there. A worker checks the entry before each load. The master is the only writer of that file; a worker writes
only its own marks.

A worker that exits cleanly (a stop or a restart, status 0 or SIGTERM/SIGINT/SIGQUIT) quarantines nothing, even
with a load under way: only a death is the version's fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

from replica.backoff import backoff
from replica.disktree import write_json_atomic

FILE = "quarantine.json"
MARK_SUFFIX = ".loading"
BASE_SECONDS, CEILING_SECONDS = 60.0, 3600.0  # the first quarantine, doubling per death, capped
STOPPED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


def _key(name: str, version: int) -> str:
    return f"{name}/{version}"


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


class LoadMarks:
    """A worker's marks of the loads it is running (several at once with model caching)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self._loading: dict[int, dict] = {}
        self._n = 0

    @contextlib.contextmanager
    def loading(self, name: str, version: int, fingerprint: str) -> Iterator[None]:
        with self._lock:
            self._n += 1
            n = self._n
            self._loading[n] = {"name": name, "version": version, "fingerprint": fingerprint}
            self._write()
        try:
            yield
        finally:
            with self._lock:
                del self._loading[n]
                self._write()

    def _write(self) -> None:
        path = self.folder / f"{os.getpid()}{MARK_SUFFIX}"
        try:
            if self._loading:
                write_json_atomic(path, list(self._loading.values()))
            else:
                path.unlink(missing_ok=True)
        except OSError:  # the runtime folder is being made again; a mark is a best effort
            pass


def death(status: int) -> str | None:
    """How a worker died, from its wait status; None for a clean exit or a stop."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in STOPPED:
            return None
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        return f"exit code {os.WEXITSTATUS(status)}"
    return None


def take_marks(folder: Path, pid: int) -> list[dict]:
    """The loads a worker had under way when it ended (its mark file is removed)."""
    path = folder / f"{pid}{MARK_SUFFIX}"
    marks = _read_json(path, [])
    path.unlink(missing_ok=True)
    return marks if isinstance(marks, list) else []


def quarantine(folder: Path, marks: list[dict], reason: str, now: float) -> list[tuple[str, int, float]]:
    """Quarantine each version in `marks` for `reason`: (name, version, seconds) of each. Deaths of the same
    copy (fingerprint) in a row double the time; a new copy starts again."""
    path = folder / FILE
    table = _read_json(path, {})
    table = {k: v for k, v in table.items() if v.get("until", 0) > now - CEILING_SECONDS}  # bounded: old ones go
    out = []
    for m in marks:
        key = _key(m["name"], m["version"])
        old = table.get(key, {})
        deaths = old.get("deaths", 0) + 1 if old.get("fingerprint") == m["fingerprint"] else 1
        seconds = backoff(deaths, BASE_SECONDS, CEILING_SECONDS)
        table[key] = {"fingerprint": m["fingerprint"], "deaths": deaths, "until": now + seconds, "reason": reason}
        out.append((m["name"], m["version"], seconds))
    if out:
        write_json_atomic(path, table)
    return out


def quarantined(folder: Path, name: str, version: int, fingerprint: str, now: float) -> tuple[str, float] | None:
    """(reason, seconds left) when this copy of the version is quarantined now."""
    entry = _read_json(folder / FILE, {}).get(_key(name, version))
    if not entry or entry.get("fingerprint") != fingerprint or entry.get("until", 0) <= now:
        return None
    return entry["reason"], entry["until"] - now


def held(folder: Path, now: float) -> dict[tuple[str, int], dict]:
    """Every quarantine in force now, by (name, version): its fingerprint, reason and seconds left (for the
    model status and /metrics, which show it before any request tries the version)."""
    out = {}
    for key, entry in _read_json(folder / FILE, {}).items():
        name, _, version = key.rpartition("/")
        if entry.get("until", 0) > now and version.isdigit():
            out[(name, int(version))] = {"fingerprint": entry.get("fingerprint"), "reason": entry.get("reason", ""),
                                         "seconds_left": entry["until"] - now}
    return out
