"""Run a real replica (`replica serve`: supervisor + gunicorn) on a free port and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReplicaProcess:
    def __init__(self, spec: Path, state_dir: Path, *, api: str | None = None, env: dict | None = None,
                 poll_interval: float = 1.0, extra_args: tuple[str, ...] = (), cwd: Path | None = None,
                 port: int | None = None, cgroup: Path | None = None):
        self.spec = Path(spec)
        self.state_dir = Path(state_dir)
        self.api = api
        self.env = env or {}
        self.poll_interval = poll_interval
        self.extra_args = extra_args
        self.cwd = cwd  # where `replica serve` is started (default: the test's own working directory)
        self.port = port or free_port()
        self.cgroup = cgroup  # a memory cgroup folder the replica starts in (its workers are forked into it)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.state_dir.parent / f"replica-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ReplicaProcess":
        cmd = [sys.executable, "-m", "supervisor.cli", "serve", str(self.spec), "--port", str(self.port),
               "--state-dir", str(self.state_dir), "--poll-interval", str(self.poll_interval), *self.extra_args]
        if self.api:
            cmd += ["--api", self.api]
        if self.cgroup is not None:  # the shell joins the cgroup, then becomes the replica (same pid)
            cmd = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup), *cmd]
        env = {**os.environ, **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.cwd, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 90, interval: float = 0.2) -> "ReplicaProcess":
        """Poll /readyz every `interval` seconds until it answers 200; raise with the log tail otherwise."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(interval)
        raise TimeoutError(f"replica not ready after {timeout}s:\n{self.log()[-4000:]}")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.base + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str = "/", **kw) -> requests.Response:
        return requests.post(self.base + path, timeout=kw.pop("timeout", 30), **kw)

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (grandchildren of the supervisor)."""
        try:
            sup = psutil.Process(self.proc.pid)
            return [p.pid for c in sup.children() for p in c.children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 40) -> int | None:
        """SIGTERM the supervisor by PID; anything left in its process groups is killed."""
        if self.proc is None:
            return None
        family = []
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()
        return self.proc.returncode


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, message: str = "condition"):
    """Poll until `predicate()` is truthy; return its value."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling through transient errors
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{message} not reached in {timeout}s (last: {last!r})")
