"""Replace gunicorn's workers one at a time, each new one ready before an old one stops.

gunicorn's own SIGHUP restarts every worker at once, which leaves no worker to answer while the new ones
load their models. Instead: SIGTTIN (one worker more), wait until that new worker has written its readiness
marker, then SIGTTOU (one worker less: gunicorn stops its oldest, which drains gracefully), once per worker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

from replica.spec import PredictorSpec

log = logging.getLogger(__name__)


def restart_only_changes(running: PredictorSpec, new: PredictorSpec) -> list[str]:
    """The keys of a new spec that a SIGHUP cannot apply to running workers (they shape gunicorn or the
    supervisor's disk cache); a reload that changes any of them is refused, naming them."""
    keys = ("type", "processes_per_replica", "threads_per_process", "disk_cache_size")
    changed = [k for k in keys if getattr(running, k) != getattr(new, k)]
    if running.caching != new.caching:
        changed.append("cache_size (model caching turned on or off)")
    return changed


class RollAborted(Exception):
    """A new worker did not become ready, or gunicorn went away; the message says which."""


def worker_pids(master_pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(master_pid).children()}
    except psutil.NoSuchProcess:
        raise RollAborted("gunicorn exited during the reload") from None


def ready_pids(markers: Path) -> set[int]:
    return {int(m.name) for m in markers.iterdir() if m.name.isdigit()}


def roll_workers(master_pid: int, markers: Path, timeout: float, stop: threading.Event,
                 restore: Callable[[], None]) -> int:
    """Replace every worker gunicorn runs now; return how many were replaced.

    On a new worker that is not ready in time, `restore` puts the previous spec back, the new worker is
    stopped (gunicorn starts one with the previous spec instead) and RollAborted is raised."""
    old = worker_pids(master_pid)
    for n in range(len(old)):
        before = worker_pids(master_pid)
        os.kill(master_pid, signal.SIGTTIN)
        deadline = time.monotonic() + timeout
        while True:
            new = (worker_pids(master_pid) - before) & ready_pids(markers)
            if new:
                break
            if stop.is_set():
                raise RollAborted("the replica is stopping")
            if time.monotonic() > deadline:
                restore()
                for pid in worker_pids(master_pid) - before:
                    os.kill(pid, signal.SIGTERM)
                os.kill(master_pid, signal.SIGTTOU)  # back to the previous count
                raise RollAborted(f"a new worker was not ready within {timeout:.0f}s")
            time.sleep(0.1)
        os.kill(master_pid, signal.SIGTTOU)  # gunicorn stops its oldest worker, one started with the old spec
        log.info("reload: worker %d of %d replaced (new pid %d)", n + 1, len(old), min(new))
    return len(old)
