"""How the supervisor starts gunicorn: its command line and its environment, from the spec and the settings.

Pure functions, so what a worker is started with can be read (and tested) in one place: the listening socket
is inherited (`fd://N`, bound by the supervisor), the worker class is the replica's own front
(`workers.front.FrontWorker`), and every setting a worker needs travels as a `REPLICA_*` variable beside the
parsed spec, never the spec file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from replica.disktree import DiskTree
from replica.spec import ApiSpec
from supervisor.preflight import worker_env
from supervisor.settings import Settings

SYSTEMD_PRIVATE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # systemd talks to the supervisor only


def gunicorn_command(api: ApiSpec, s: Settings, listen_fd: int, runtime_dir: Path) -> list[str]:
    """gunicorn's command line: the inherited socket, the replica's worker class, sizes from the spec."""
    pred = api.predictor
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", f"fd://{listen_fd}",
        "--workers", str(pred.processes_per_replica),
        "--threads", str(pred.threads_per_process),
        "--worker-class", "workers.front.FrontWorker",
        "--graceful-timeout", str(int(s.drain_timeout)),
        "--timeout", str(max(1, round(s.worker_timeout))),
        "--keep-alive", str(s.keep_alive),
        "--worker-connections", str(s.worker_connections),
        "--backlog", "2048",
        "--log-level", "warning",
        "--error-logfile", "-",
        "--worker-tmp-dir", str(runtime_dir),
        "--no-control-socket",  # gunicorn's default socket is one per user, shared by every replica
        "--name", f"replica-{api.name}",
        "--config", "python:workers.gunicorn_conf",
        "workers.wsgi:application",
    ]


def gunicorn_env(api: ApiSpec, s: Settings, tree: DiskTree, spec_file: Path) -> dict[str, str]:
    """The workers' environment: the spec's env, the replica's settings, and where the parsed spec (JSON) is."""
    env = worker_env(api)
    for private in SYSTEMD_PRIVATE:
        env.pop(private, None)
    env.update({
        "REPLICA_SPEC_FILE": str(spec_file),
        "REPLICA_STATE_DIR": str(tree.root),
        "REPLICA_RUNTIME_DIR": str(tree.run),
        "REPLICA_POLL_INTERVAL": str(s.poll_interval),
        "REPLICA_HEARTBEAT_TIMEOUT": str(s.heartbeat_timeout),
        "REPLICA_WORKER_TIMEOUT": str(s.worker_timeout),
        "REPLICA_LOAD_WAIT": str(s.load_wait),
        "REPLICA_LOAD_TIMEOUT": str(s.load_timeout),
        "REPLICA_REQUEST_TIMEOUT": str(s.request_timeout),
        "REPLICA_WORKER_MAX_RSS": str(s.worker_max_rss or 0),
        "REPLICA_METRICS_MODEL_LABELS": s.metrics_model_labels,
        "REPLICA_MAX_REQUEST_SIZE": str(s.max_request_size),
        "REPLICA_HEADER_TIMEOUT": str(s.header_timeout),
        "REPLICA_BODY_TIMEOUT": str(s.body_timeout),
        "REPLICA_MAX_BUFFERED_BYTES": str(s.max_buffered_bytes),
        "REPLICA_MAX_REPLICA_CONCURRENCY": str(api.max_replica_concurrency),
        "REPLICA_HOST": s.host,  # where each worker binds its own gRPC server (workers/grpc_server.py)
        "REPLICA_GRPC_PORT": str(s.grpc_port or 0),
        "REPLICA_LOG_FORMAT": s.log_format,
        "REPLICA_ACCESS_LOG": "1" if s.access_log else "0",
        "REPLICA_SUPERVISOR_PID": str(os.getpid()),
        "PROMETHEUS_MULTIPROC_DIR": str(tree.metrics_dir),
    })
    return env
