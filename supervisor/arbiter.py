"""The supervisor: the process systemd starts. It owns the watcher and the disk tree and runs gunicorn.

Shaped like gunicorn's own arbiter: signal handlers only queue the signal and wake the loop; one loop
handles signals, reaps gunicorn, restarts it when it dies, and checks that the watcher thread is alive.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout

from replica.disktree import DiskTree
from replica.settings import Settings
from replica.spec import ApiSpec
from supervisor.catalogue import Catalogue
from supervisor.control import control_socket_path, serve_control
from supervisor.disk_cache import DiskCache
from supervisor.upstream import open_upstream
from supervisor.watcher import Watcher

log = logging.getLogger(__name__)

GUNICORN_USAGE_ERROR, GUNICORN_BOOT_ERROR = 2, 3  # gunicorn: bad options; a worker cannot import the app
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class StateDirInUse(Exception):
    pass


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)

    def __init__(self, api: ApiSpec, settings: Settings):
        self.api = api
        self.settings = settings
        self.tree = DiskTree(settings.state_dir)
        upstreams = [(s, open_upstream(s.url, settings.s3_client_factory)) for s in api.predictor.sources]
        self.catalogue = Catalogue(api.predictor, upstreams)
        pred = api.predictor
        self.watcher = Watcher(self.tree, self.catalogue, poll_interval=settings.poll_interval, prefetch=not pred.caching)
        self.disk_cache = DiskCache(self.watcher, pred.disk_cache_size) if pred.caching else None
        self._control = None
        self.stop_event = threading.Event()
        self.signal_queue: list[int] = []
        self.gunicorn: subprocess.Popen | None = None
        self.restart_at: float | None = None
        self.restarts = 0
        self.ever_ready = False
        self._watcher_thread: threading.Thread | None = None
        self._pipe_r, self._pipe_w = os.pipe()
        self._state_lock = FileLock(str(self.tree.root / "replica.lock"))

    # -- signals only queue ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.signal_queue.append(signum)
        try:
            os.write(self._pipe_w, b".")
        except OSError:
            pass

    def _install_signals(self) -> None:
        os.set_blocking(self._pipe_w, False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.tree.root.mkdir(parents=True, exist_ok=True)
        try:
            self._state_lock.acquire(timeout=0)
        except Timeout:
            raise StateDirInUse(f"another replica is using the state directory {self.tree.root}; give this one its own --state-dir") from None
        try:
            return self._run()
        finally:
            self._state_lock.release()

    def _run(self) -> int:
        self._install_signals()
        self.watcher.start()
        if self.disk_cache is not None:
            self.disk_cache.trim()
            path = control_socket_path(self.tree.run)
            self._control = serve_control(path, self.disk_cache)
            self.watcher.control_socket = str(path)
        self.watcher.publish()
        self._start_watcher()
        self._spawn_gunicorn()
        log.info("replica %s serving on http://%s:%d (state in %s)", self.api.name, self.settings.host,
                 self.settings.port, self.tree.root)
        while True:
            try:
                readable, _, _ = select.select([self._pipe_r], [], [], 1.0)
                if readable:
                    os.read(self._pipe_r, 4096)
            except InterruptedError:
                pass
            while self.signal_queue:
                sig = self.signal_queue.pop(0)
                if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                    log.info("received %s: draining requests and stopping", signal.Signals(sig).name)
                    return self._shutdown()
                if sig == signal.SIGHUP and self.gunicorn is not None:
                    log.info("received SIGHUP: reloading gunicorn workers")
                    self.gunicorn.send_signal(signal.SIGHUP)
            status = self._reap()
            if status is not None:
                return status
            self._manage()

    def _start_watcher(self) -> None:
        self._watcher_thread = threading.Thread(target=self.watcher.run, args=(self.stop_event,), name="watcher", daemon=True)
        self._watcher_thread.start()

    def _manage(self) -> None:
        if self._watcher_thread is not None and not self._watcher_thread.is_alive() and not self.stop_event.is_set():
            log.error("the watcher thread stopped; starting it again")
            self._start_watcher()
        if not self.ever_ready and any(self.tree.workers_dir.iterdir()):
            self.ever_ready = True
        if self.gunicorn is None and self.restart_at is not None and time.time() >= self.restart_at:
            self._spawn_gunicorn()

    def _reap(self) -> int | None:
        """Notice gunicorn's exit; restart it with backoff, or give up if it never booted."""
        if self.gunicorn is None:
            return None
        code = self.gunicorn.poll()
        if code is None:
            return None
        self.gunicorn = None
        if code in (GUNICORN_USAGE_ERROR, GUNICORN_BOOT_ERROR) and not self.ever_ready:
            log.error("the workers could not start (see the error above); stopping")
            self.stop_event.set()
            return 1
        self.restarts += 1
        delay = min(30.0, 2.0 ** min(self.restarts, 5))
        log.error("gunicorn exited with status %s; restarting it in %.0fs", code, delay)
        self.restart_at = time.time() + delay
        return None

    def _spawn_gunicorn(self) -> None:
        self.restart_at = None
        pred = self.api.predictor
        s = self.settings
        for marker in self.tree.workers_dir.iterdir():
            marker.unlink(missing_ok=True)
        shutil.rmtree(self.tree.metrics_dir, ignore_errors=True)  # counters start again with the workers
        self.tree.metrics_dir.mkdir(parents=True)
        cmd = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"{s.host}:{s.port}",
            "--workers", str(pred.processes_per_replica),
            "--threads", str(pred.threads_per_process),
            "--worker-class", "gthread",
            "--graceful-timeout", str(int(s.drain_timeout)),
            "--timeout", "120",
            "--keep-alive", "5",
            "--backlog", "2048",
            "--log-level", "warning",
            "--error-logfile", "-",
            "--worker-tmp-dir", str(self.tree.run),
            "--name", f"replica-{self.api.name}",
            "--config", "python:workers.gunicorn_conf",
            "workers.wsgi:application",
        ]
        env = dict(os.environ)
        env.update(pred.env)
        env.update({
            "REPLICA_SPEC": str(self.api.spec_file),
            "REPLICA_API": self.api.name,
            "REPLICA_STATE_DIR": str(self.tree.root),
            "REPLICA_POLL_INTERVAL": str(s.poll_interval),
            "REPLICA_HEARTBEAT_TIMEOUT": str(s.heartbeat_timeout),
            "REPLICA_MAX_REQUEST_SIZE": str(s.max_request_size),
            "REPLICA_LOG_FORMAT": s.log_format,
            "PROMETHEUS_MULTIPROC_DIR": str(self.tree.metrics_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")])),
        })
        # Its own session: a terminal's Ctrl-C reaches only the supervisor, which then drains gunicorn.
        self.gunicorn = subprocess.Popen(cmd, env=env, start_new_session=True)
        log.info("gunicorn started (pid %d): %d workers x %d threads", self.gunicorn.pid,
                 pred.processes_per_replica, pred.threads_per_process)

    def _shutdown(self) -> int:
        self.stop_event.set()
        if self.gunicorn is not None:
            self.gunicorn.send_signal(signal.SIGTERM)  # gunicorn stops accepting and lets requests finish
            try:
                self.gunicorn.wait(self.settings.drain_timeout + 5)
            except subprocess.TimeoutExpired:
                log.warning("gunicorn did not stop within the drain timeout; killing it")
                self.gunicorn.kill()
                self.gunicorn.wait()
        if self._watcher_thread is not None:
            self._watcher_thread.join(timeout=10)
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
        log.info("replica stopped")
        return 0
