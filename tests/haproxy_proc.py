"""Run the real HAProxy (the Debian package) in front of replicas, with a config from deploy/haproxy/config.py."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from deploy.haproxy.config import Options, Server, render
from tests.replica_proc import free_port


def find_haproxy() -> str | None:
    """The haproxy binary (Debian puts it in /usr/sbin, which a user's PATH may leave out)."""
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                            if os.access(p, os.X_OK)), None)


class HAProxyProcess:
    """One `haproxy -db` process on 127.0.0.1 with a stats socket for its runtime API."""

    def __init__(self, folder: Path, servers: list[Server], port: int | None = None, config: Path | None = None,
                 **options):
        """A configuration rendered here from `servers` and `options`, or, with `config`, one written elsewhere
        (its bind on 127.0.0.1:`port` and its stats socket at FOLDER/haproxy.sock)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.socket_path = self.folder / "haproxy.sock"
        self.config_path = Path(config) if config is not None else self.folder / "haproxy.cfg"
        self.log_path = self.folder / "haproxy.log"
        if config is None:
            opts = Options(bind=f"127.0.0.1:{self.port}", servers=servers, stats_socket=str(self.socket_path),
                           **options)
            self.config_path.write_text(render(opts))
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HAProxyProcess":
        binary = find_haproxy()
        if binary is None:
            raise FileNotFoundError("haproxy not found: apt-get install -y haproxy")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config_path)], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def command(self, line: str) -> str:
        """One command on the runtime API (`show stat`, `set server replicas/r1 state drain`, ...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_status(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it: UP, DOWN, MAINT, "UP 1/2" while checks move it..."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "replicas" and r["svname"] != "BACKEND"}

    def wait_ready(self, timeout: float = 60) -> "HAProxyProcess":
        """Until the runtime API answers and every server is UP."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                last = self.server_status()
                if last and all(v == "UP" for v in last.values()):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"haproxy servers not all UP after {timeout}s: {last}\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> int | None:
        """Soft stop (SIGUSR1: stop listening, finish requests in flight), SIGKILL if it outlives `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
