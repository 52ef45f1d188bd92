"""gunicorn server hooks (`--config python:workers.gunicorn_conf`), run in the gunicorn master process."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import multiprocess

from replica.disktree import DiskTree


def child_exit(server, worker) -> None:
    """A worker exited, or was killed: its live gauges stop counting and its readiness marker goes, so
    /metrics and /readyz describe the workers that run now (gunicorn starts a replacement)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
    state_dir = os.environ.get("REPLICA_STATE_DIR")
    if state_dir:
        (DiskTree(Path(state_dir)).workers_dir / str(worker.pid)).unlink(missing_ok=True)


# gunicorn's own lines (a worker killed, a timeout) in the replica's format, so a JSON log stays all JSON.
if os.environ.get("REPLICA_LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"generic": {"()": "replica.logs.JsonFormatter", "process_name": "gunicorn"}},
    }
