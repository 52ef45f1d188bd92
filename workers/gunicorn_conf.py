"""gunicorn server hooks (`--config python:workers.gunicorn_conf`), run in the gunicorn master process."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path

from prometheus_client import multiprocess

from replica import cgroup, exit_codes, quarantine
from replica.backoff import backoff
from replica.disktree import DiskTree


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


_real_waitpid = os.waitpid
_wait_status: dict[int, int] = {}  # pid -> wait status of workers reaped and not yet seen by child_exit
_oom_kills: int | None = None  # the memory cgroup's OOM kill count when last looked at


def _recording_waitpid(pid: int, options: int) -> tuple[int, int]:
    """os.waitpid as gunicorn's master calls it when it reaps, keeping each worker's wait status for
    `child_exit` (which gunicorn calls with the worker, not how it ended)."""
    wpid, status = _real_waitpid(pid, options)
    if wpid > 0:
        _wait_status[wpid] = status
    return wpid, status


def on_starting(server) -> None:
    """The master stops (draining its workers) when the supervisor dies, so nothing serves without a
    supervisor. If the supervisor died before this ran, the signal will never come: stop now.

    A user's exit code never halts the master (replica/exit_codes.py)."""
    _die_with_parent(signal.SIGTERM)
    server.WORKER_BOOT_ERROR = exit_codes.WORKER_BOOT_ERROR
    server.APP_LOAD_ERROR = exit_codes.APP_LOAD_ERROR
    global _oom_kills
    os.waitpid = _recording_waitpid
    _oom_kills = cgroup.oom_kills()
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
    os.waitpid = _real_waitpid  # the recording is the master's

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
    /metrics and /readyz describe the workers that run now (gunicorn starts a replacement, unless the worker
    retired and its replacement already runs)."""
    global _young_deaths
    started = getattr(worker, "replica_started", None)
    young = started is not None and time.monotonic() - started < YOUNG_SECONDS
    _young_deaths = _young_deaths + 1 if young else 0
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
    status = _wait_status.pop(worker.pid, None)
    board = getattr(type(worker), "board", None)  # workers.front's board, created in this process
    if board is not None and board.retiring(worker.pid) and server.num_workers > 1:
        server.num_workers -= 1  # it asked for its replacement (SIGTTIN) before it retired: that one takes its place
    state_dir = os.environ.get("REPLICA_STATE_DIR")
    if state_dir:
        workers_dir = DiskTree(Path(state_dir), os.environ.get("REPLICA_RUNTIME_DIR")).workers_dir
        (workers_dir / str(worker.pid)).unlink(missing_ok=True)
        _quarantine_loads(server, worker.pid, workers_dir, status)


def _quarantine_loads(server, pid: int, workers_dir: Path, status: int | None) -> None:
    """A worker that died while loading versions (replica/quarantine.py): quarantine them, and say in one line
    each which version, how the worker died, and, for an OOM kill, what to change."""
    global _oom_kills
    marks = quarantine.take_marks(workers_dir, pid)
    how = quarantine.death(status) if status is not None else None
    kills = cgroup.oom_kills()
    oom = kills is not None and _oom_kills is not None and kills > _oom_kills
    _oom_kills = kills
    if not marks or how is None:
        return
    if oom:
        how = "killed by the kernel's OOM killer (the memory limit)"
    for name, version, seconds in quarantine.quarantine(workers_dir, marks, f"the worker died while loading it: {how}",
                                                       time.time()):
        hint = (" Lower predictor.models.cache_size, or raise the memory limit, so the models held in memory fit."
                if oom else "")
        server.log.error("worker (pid:%s) died while loading model %s version %s (%s); the version is quarantined "
                         "for %.0fs or until it changes upstream.%s", pid, name, version, how, seconds, hint)


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
