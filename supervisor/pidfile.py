"""The gunicorn pid file: how a new supervisor stops whatever a killed one left running.

The supervisor records the process group of every gunicorn it starts (gunicorn runs in its own session, so
the group holds the master and all its workers). Those processes also get a parent-death signal, but a
supervisor killed at the wrong instant, or a worker stuck in a system call, can still leave some behind; a
new supervisor on the same state directory stops them before it listens, so two generations never share
the port or the readiness markers.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def write_pidfile(path: Path, gunicorn_pid: int) -> None:
    """Record a gunicorn master (its pid is its group's id) with its start time, so a recycled pid is not hit."""
    created = psutil.Process(gunicorn_pid).create_time()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pgid": gunicorn_pid, "created": created, "supervisor": os.getpid()}))
    os.replace(tmp, path)


def leftover_processes(path: Path, state_dir: Path) -> list[psutil.Process]:
    """The processes of the recorded gunicorn group still alive and still serving `state_dir` (none when the
    file is missing or stale: after a reboot, or once the pid has been reused by an unrelated process)."""
    try:
        record = json.loads(path.read_text())
        pgid, created = int(record["pgid"]), float(record["created"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return []
    if created < psutil.boot_time():
        return []
    found = []
    for p in psutil.process_iter(["pid", "create_time"]):
        try:
            if p.pid == os.getpid() or os.getpgid(p.pid) != pgid or p.info["create_time"] < created - 1:
                continue
            if p.environ().get("REPLICA_STATE_DIR") == str(state_dir):  # ours, not a recycled group id
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def stop_leftovers(path: Path, state_dir: Path, timeout: float = 10.0) -> int:
    """Kill what a previous supervisor left running and wait until it is gone; return how many there were."""
    procs = leftover_processes(path, state_dir)
    if procs:
        log.warning("stopping %d process(es) a previous replica on this state directory left running (pids %s)",
                    len(procs), ", ".join(str(p.pid) for p in procs))
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        if alive:
            log.error("processes %s did not stop", ", ".join(str(p.pid) for p in alive))
    path.unlink(missing_ok=True)
    return len(procs)
