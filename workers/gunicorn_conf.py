"""gunicorn server hooks (`--config python:workers.gunicorn_conf`), run in the gunicorn master process."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path

from prometheus_client import multiprocess

from replica.backoff import backoff
from replica.disktree import DiskTree


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def on_starting(server) -> None:
    """The master stops (draining its workers) when the supervisor dies, so nothing serves without a
    supervisor. If the supervisor died before this ran, the signal will never come: stop now."""
    _die_with_parent(signal.SIGTERM)
    supervisor = os.environ.get("REPLICA_SUPERVISOR_PID")
    if supervisor and os.getppid() != int(supervisor):
        os._exit(1)


def post_fork(server, worker) -> None:
    """A worker whose master was killed stops accepting at once and finishes what it holds; the supervisor's
    next gunicorn takes the connections waiting on the shared socket.

    While the app loads (the predictor's imports and __init__ can take minutes) the worker's main loop does
    not run yet, so a thread tells the master it is alive: --worker-timeout is for a worker that hangs once
    serving, not one that starts slowly (/readyz shows that)."""
    _die_with_parent(signal.SIGTERM)

    def booting() -> None:
        while not worker.booted and worker.alive:
            worker.notify()
            time.sleep(1.0)

    threading.Thread(target=booting, name="booting", daemon=True).start()


YOUNG_SECONDS = 10.0  # a worker that dies this soon after it was started is taken as failing to start
MAX_RESPAWN_DELAY = 10.0
_young_deaths = 0  # in a row, in this gunicorn master


def respawn_delay(young_deaths: int) -> float:
    """Seconds to wait before starting a worker after `young_deaths` workers in a row died young: gunicorn
    itself respawns at once, which turns a worker that crashes at start into thousands of deaths a minute."""
    return backoff(young_deaths, 0.5, MAX_RESPAWN_DELAY)


def pre_fork(server, worker) -> None:
    delay = respawn_delay(_young_deaths)
    if delay:
        server.log.warning("%d worker(s) in a row died within %.0fs of starting; starting the next in %.1fs",
                           _young_deaths, YOUNG_SECONDS, delay)
        time.sleep(delay)
    worker.replica_started = time.monotonic()


def child_exit(server, worker) -> None:
    """A worker exited, or was killed: its live gauges stop counting and its readiness marker goes, so
    /metrics and /readyz describe the workers that run now (gunicorn starts a replacement)."""
    global _young_deaths
    started = getattr(worker, "replica_started", None)
    young = started is not None and time.monotonic() - started < YOUNG_SECONDS
    _young_deaths = _young_deaths + 1 if young else 0
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
    state_dir = os.environ.get("REPLICA_STATE_DIR")
    if state_dir:
        (DiskTree(Path(state_dir), os.environ.get("REPLICA_RUNTIME_DIR")).workers_dir / str(worker.pid)).unlink(missing_ok=True)


def _logconfig(fmt: str) -> dict:
    """gunicorn's own lines (a worker killed, a timeout) in the replica's format on stderr; the access lines
    are the front worker's own (workers/access_log.py). The logger does not propagate to the root logger, which
    has a handler of its own in every worker: a line goes out once."""
    if fmt == "json":
        formatter = {"()": "replica.logs.JsonFormatter", "process_name": "gunicorn"}
    else:
        formatter = {"format": "%(asctime)s %(levelname)s [gunicorn %(process)d] %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "WARNING", "handlers": []},
        "formatters": {"gunicorn": formatter},
        "handlers": {"gunicorn": {"class": "logging.StreamHandler", "formatter": "gunicorn", "stream": "ext://sys.stderr"}},
        "loggers": {
            "gunicorn.error": {"level": "WARNING", "handlers": ["gunicorn"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


logconfig_dict = _logconfig(os.environ.get("REPLICA_LOG_FORMAT", "text"))
