"""The supervisor: the process systemd starts. It owns the watcher and the disk tree and runs gunicorn.

Shaped like gunicorn's own arbiter: signal handlers only queue the signal and wake the loop; one loop
handles signals, reaps gunicorn, restarts it when it dies, and checks that the watcher thread is alive. The
running spec and its reloads belong to a SpecReloader the arbiter owns (supervisor/spec_reload.py).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from replica import exit_codes
from replica.backoff import backoff
from replica.disktree import DiskTree
from replica.private_dir import UnsafeDirectory
from supervisor.settings import Settings
from replica.spec import ApiSpec
from supervisor.catalogue import Catalogue
from supervisor.control import control_socket_path, serve_control
from supervisor.disk_cache import DiskCache
from supervisor.warm_set import WarmSet
from supervisor.listener import PortInUse, bind_listener, check_free
from supervisor.pidfile import stop_leftovers, write_pidfile
from supervisor.gunicorn_cmd import gunicorn_command, gunicorn_env
from supervisor.sdnotify import Notifier
from supervisor.spec_reload import SpecReloader
from supervisor.tree_guard import InUse, LockUnavailable, TreeGuard, TreeLost
from supervisor.upstream import open_upstream
from supervisor.watcher import Watcher

log = logging.getLogger(__name__)

GUNICORN_USAGE_ERROR = 2  # gunicorn: bad options
# a worker could not start or import the app (the codes the gunicorn hooks give the master)
GUNICORN_BOOT_ERRORS = (exit_codes.WORKER_BOOT_ERROR, exit_codes.APP_LOAD_ERROR)
HEALTHY_SECONDS = 60.0  # a gunicorn that ran this long was healthy: its death starts the backoff afresh
MAX_RESTART_DELAY = 30.0


class StartupError(Exception):
    """A problem a restart cannot fix (exit status 2): the message names the fix."""


class StateDirInUse(StartupError):
    pass


def restrict_umask() -> None:
    """Add 027 to the umask (as the shipped unit's UMask=0027): what the replica and its workers create, the
    state directory's models included, is the group's to read at most and never other users'."""
    os.umask(os.umask(0o027) | 0o027)


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting gunicorn again after `failures` deaths in a row (1 = the first).

    The first restart is immediate: the listening socket stays open, so a quick restart costs no refused
    connection. Deaths in quick succession then back off exponentially up to MAX_RESTART_DELAY."""
    return backoff(failures - 1, 1.0, MAX_RESTART_DELAY)


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)

    def __init__(self, api: ApiSpec, settings: Settings):
        self.settings = settings
        self.tree = DiskTree(settings.state_dir)
        upstreams = [(s, open_upstream(s.url, settings.s3_client_factory, settings.s3_download_client_factory))
                     for s in api.predictor.sources]
        pred = api.predictor
        self.watcher = Watcher(self.tree, Catalogue(api.predictor, upstreams), poll_interval=settings.poll_interval,
                               prefetch=not pred.caching)
        for _, upstream in upstreams:
            upstream.on_page = self.watcher.alive
        self.disk_cache = (DiskCache(self.watcher, pred.disk_cache_size, WarmSet(self.tree.root))
                           if pred.caching else None)
        self._control = None
        self.stop_event = threading.Event()
        self.signal_queue: list[int] = []
        self.gunicorn: subprocess.Popen | None = None
        self.gunicorn_started = 0.0
        self.listener = None
        self.restart_at: float | None = None
        self.failures = 0  # gunicorn deaths in a row, each within HEALTHY_SECONDS of its start
        self.ever_ready = False
        self._watcher_thread: threading.Thread | None = None
        self.notifier = Notifier()
        self.reloader = SpecReloader(api, settings, self.tree, self.watcher, self.notifier, self.stop_event,
                                     lambda: self.gunicorn)
        self._last_watchdog = 0.0
        self._pipe_r, self._pipe_w = os.pipe()
        # The single-owner locks, and the check that the disk tree is still there (supervisor/tree_guard.py).
        self.guard = TreeGuard(self.tree, self.watcher, restore_runtime=self._restore_runtime,
                               restore_state=self._restore_pidfile)

    @property
    def api(self) -> ApiSpec:
        """The spec being served: the reloader's, which a SIGHUP may replace."""
        return self.reloader.api

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
    @property
    def pid_file(self) -> Path:
        return self.tree.root / "gunicorn.pid"

    def run(self) -> int:
        """Take the state directory, stop what a killed predecessor left, listen, then serve until stopped.

        Raises StartupError for what a restart cannot fix."""
        restrict_umask()
        root = self.tree.root
        try:
            self.guard.take()
        except InUse as e:
            raise StateDirInUse(f"the state directory {root} is in use: {e}; give this one its own "
                                "--state-dir") from None
        except LockUnavailable as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"the state directory {root} is not writable ({e.strerror}); give --state-dir "
                               "(or REPLICA_STATE_DIR) a folder this user can write") from None
        # The lock is never released here: it goes with the process (see replica serve), so no thread of this
        # one can still be writing into the state directory when the next supervisor takes it.
        stop_leftovers(self.pid_file, self.tree.root)
        try:
            self.tree.prepare_runtime()
        except UnsafeDirectory as e:
            raise StartupError(str(e)) from None
        try:
            self.listener = bind_listener(self.settings.host, self.settings.port)
            if self.settings.grpc_port is not None:
                check_free(self.settings.host, self.settings.grpc_port)
        except PortInUse as e:
            if self.listener is not None:
                self.listener.close()
            raise StartupError(str(e)) from None
        try:
            return self._run()
        finally:
            self.listener.close()

    def _run(self) -> int:
        self._install_signals()
        self.watcher.start()
        if self.disk_cache is not None:
            self.disk_cache.trim()
            self.watcher.warm = self.disk_cache.warm_start()
            if self.watcher.warm:
                log.info("bringing back into memory what was there when the replica stopped: %s",
                         ", ".join(f"{n} version {v}" for n, v in self.watcher.warm))
            path = control_socket_path(self.tree.run)
            self._control = serve_control(path, self.disk_cache)
            self.watcher.control_socket = str(path)
        self.watcher.publish()
        self.guard.started()
        self._start_watcher()
        self._spawn_gunicorn()
        grpc = f" and gRPC on port {self.settings.grpc_port}" if self.settings.grpc_port is not None else ""
        log.info("replica %s serving on http://%s:%d%s (state in %s)", self.api.name, self.settings.host,
                 self.settings.port, grpc, self.tree.root)
        self.notifier.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=listening on {self.settings.host}:"
                             f"{self.settings.port}")
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
                if sig == signal.SIGHUP:
                    self.reloader.request()
            try:
                self.guard.check()
                status = self._reap()
                if status is not None:
                    return status
                self._manage()
            except TreeLost as e:
                log.error("%s", e)
                return self._shutdown(status=1)

    def _start_watcher(self) -> None:
        self._watcher_thread = threading.Thread(target=self.watcher.run, args=(self.stop_event,), name="watcher", daemon=True)
        self._watcher_thread.start()

    def _watchdog(self) -> None:
        """Ping systemd's watchdog while the watcher's heartbeat is fresh (the same test /healthz makes): a
        watcher stuck past the heartbeat timeout stops the pings, and systemd restarts the replica."""
        interval = self.notifier.watchdog_interval
        if interval is None or time.monotonic() - self._last_watchdog < interval:
            return
        try:
            age = time.time() - self.tree.heartbeat_file.stat().st_mtime
        except OSError:
            age = float("inf")
        if age <= self.settings.heartbeat_timeout:
            self.notifier.notify("WATCHDOG=1")
            self._last_watchdog = time.monotonic()

    def _manage(self) -> None:
        self._watchdog()
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
        if (code == GUNICORN_USAGE_ERROR or code in GUNICORN_BOOT_ERRORS) and not self.ever_ready:
            log.error("the workers could not start (see the error above); stopping")
            self.stop_event.set()
            return 1
        ran = time.monotonic() - self.gunicorn_started
        self.failures = 1 if ran >= HEALTHY_SECONDS else self.failures + 1
        delay = restart_delay(self.failures)
        log.error("gunicorn exited with status %s after %.0fs; restarting it%s", code, ran,
                  f" in {delay:.0f}s" if delay else " now")
        self.restart_at = time.time() + delay
        return None

    def _spawn_gunicorn(self) -> None:
        self.restart_at = None
        api = self.api  # one spec throughout, even if a reload replaces it meanwhile
        pred = api.predictor
        s = self.settings
        self.guard.check_runtime()  # gunicorn's workers need the runtime folder (their tmp dir) from the start
        for marker in self.tree.workers_dir.iterdir():
            marker.unlink(missing_ok=True)
        shutil.rmtree(self.tree.metrics_dir, ignore_errors=True)  # counters start again with the workers
        self.tree.metrics_dir.mkdir(parents=True)
        self.reloader.write_spec(api)
        cmd = gunicorn_command(api, s, self.listener.fileno(), self.tree.run)
        env = gunicorn_env(api, s, self.tree, self.reloader.spec_json)
        # Its own session: a terminal's Ctrl-C reaches only the supervisor, which then drains gunicorn; its
        # process group is what the pid file records. The listening socket is the one fd it inherits.
        self.gunicorn = subprocess.Popen(cmd, env=env, start_new_session=True, pass_fds=(self.listener.fileno(),))
        self.gunicorn_started = time.monotonic()
        try:
            write_pidfile(self.pid_file, self.gunicorn.pid)
        except OSError as e:  # a full state disk: the parent-death signal still stops gunicorn with us
            log.warning("cannot write %s (%s); a replica started after a crash of this one may find gunicorn "
                        "still running", self.pid_file, e.strerror)
        log.info("gunicorn started (pid %d): %d workers x %d threads", self.gunicorn.pid,
                 pred.processes_per_replica, pred.threads_per_process)

    def _restore_runtime(self) -> None:
        """The supervisor's part of re-making a removed runtime folder: the parsed spec the workers start
        from, and the control socket they ask for versions on (model caching)."""
        self.reloader.write_spec(self.api)
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            path = control_socket_path(self.tree.run)
            self._control = serve_control(path, self.disk_cache)
            self.watcher.control_socket = str(path)

    def _restore_pidfile(self) -> None:
        """Record gunicorn again in a re-made state directory, so a successor after a crash can stop it."""
        if self.gunicorn is not None:
            try:
                write_pidfile(self.pid_file, self.gunicorn.pid)
            except OSError as e:
                log.warning("cannot write %s (%s)", self.pid_file, e.strerror)

    def _shutdown(self, status: int = 0) -> int:
        self.notifier.notify("STOPPING=1")
        self.stop_event.set()
        if self.gunicorn is not None:
            self.gunicorn.send_signal(signal.SIGTERM)  # gunicorn stops accepting and lets requests finish
        # Once gunicorn has closed its copies too, new connections are refused (a client retries elsewhere)
        # instead of waiting in a backlog nobody will accept from.
        self.listener.close()
        if self.gunicorn is not None:
            try:
                self.gunicorn.wait(self.settings.drain_timeout + 2)  # its own graceful timeout is the drain timeout
            except subprocess.TimeoutExpired:
                log.warning("gunicorn did not stop within the drain timeout; killing it")
                os.killpg(self.gunicorn.pid, signal.SIGKILL)
                self.gunicorn.wait()
            self.pid_file.unlink(missing_ok=True)
        if self._watcher_thread is not None:
            # Downloads end at their next chunk; one stalled on a silent upstream ends with the process.
            self._watcher_thread.join(timeout=2)
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
        if self.guard.owns_runtime():  # never the folder of another supervisor of this state directory
            shutil.rmtree(self.tree.run, ignore_errors=True)
        log.info("replica stopped")
        return status
