"""The limit stacks of the hot-path figure: how fast other ways of serving the same model can go on this machine.

Each runs the iris ONNX model with 2 worker processes (or model instances) from its own virtualenv
(`servers.ensure_venv`, exact pins below) and does the same work per request as the replica: decode the JSON
body, one `session.run`, answer the label. The apps they run are files in `scripts/stack_apps/` (plain
modules, no project code), so that each peer pays only for its own stack:

- `granian`: granian (Rust HTTP server) with a raw WSGI callable, `--interface wsgi --workers 2`: the
  ceiling for a Python WSGI app, which is what the replica's Flask app is;
- `uvicorn`: uvicorn + httptools + uvloop with a raw ASGI callable, `--workers 2`;
- `litserve`: LitServe, `workers_per_device=2` on CPU (FastAPI/uvicorn API servers in front of 2 inference
  worker processes);
- `triton`: Triton Inference Server through PyTriton, Triton's own REST API (KServe v2 JSON), 2 model
  instances.

MLServer and the gunicorn + Flask floors are in `servers.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from scripts.bench_lib import models, servers
from tests.replica_proc import free_port

APPS = servers.ROOT / "scripts" / "stack_apps"
WORKERS = 2
ORT = ["onnxruntime==1.32.0", "numpy==2.4.6"]  # the project's own onnxruntime and numpy


@dataclass(frozen=True)
class Stack:
    """One limit stack: its virtualenv's pins, how the doc names it, what a request to it is."""

    name: str
    title: str
    pins: tuple[str, ...]
    body: str
    path: str

    @property
    def version(self) -> str:
        """The stack's own package and version, from its first pin ("granian 2.8.7")."""
        return self.pins[0].replace("==", " ")


STACKS: dict[str, Stack] = {s.name: s for s in (
    Stack("granian", "granian, raw WSGI", ("granian==2.8.7", *ORT), models.SAMPLE, "/"),
    Stack("uvicorn", "uvicorn + httptools + uvloop, raw ASGI",
          ("uvicorn==0.54.0", "httptools==0.9.0", "uvloop==0.23.0", *ORT), models.SAMPLE, "/"),
    Stack("litserve", "LitServe", ("litserve==0.2.19", "fastapi==0.165.0", "uvicorn==0.55.0", "pyzmq==27.3.0", *ORT),
          models.SAMPLE, "/predict"),
    # PyTriton 0.7.0 requires numpy < 2; onnxruntime 1.32.0 runs with numpy 1.26.
    Stack("triton", "Triton (PyTriton), KServe v2 JSON",
          ("nvidia-pytriton==0.7.0", "tritonclient==2.73.0", "onnxruntime==1.32.0", "numpy==1.26.4"),
          servers.V2_BODY, "/v2/models/iris/infer"),
)}


class StackServer(servers.Server):
    """A limit stack's server from its virtualenv's python, the app files importable, the model in
    $BENCH_ONNX_MODEL."""

    def __init__(self, stack: Stack, py: Path, model_file: Path, work: Path):
        super().__init__(f"{stack.name}-{WORKERS}", work / f"{stack.name}-{WORKERS}.log")
        self.stack, self.py, self.model_file, self.work = stack, py, model_file, work

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {"BENCH_ONNX_MODEL": str(self.model_file), "PYTHONPATH": str(APPS)}

    def start(self) -> "StackServer":
        self._popen(self.command(), env=self.env(), cwd=APPS)
        return self


class Granian(StackServer):
    ready_path = "/readyz"

    def command(self) -> list[str]:
        return [str(self.py), "-m", "granian", "--interface", "wsgi", "--workers", str(WORKERS),
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "wsgi_app:app"]


class Uvicorn(StackServer):
    ready_path = "/readyz"

    def command(self) -> list[str]:
        return [str(self.py), "-m", "uvicorn", "--http", "httptools", "--loop", "uvloop", "--workers", str(WORKERS),
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "--no-access-log",
                "asgi_app:app"]


class LitServe(StackServer):
    ready_path = "/health"  # 200 once every inference worker has set up

    def command(self) -> list[str]:
        return [str(self.py), "litserve_app.py", str(self.port)]


class Triton(StackServer):
    """The iris model answering its label (BYTES), as every limit stack does."""

    ready_path = "/v2/models/iris/ready"
    answer = "label"  # what triton_app.py answers: see its docstring

    def command(self) -> list[str]:
        # PyTriton's workspace (sockets, its copy of tritonserver) goes in the run's work folder, removed with it.
        return [str(self.py), "triton_app.py", str(self.port), str(free_port()), str(free_port()),
                str(self.work / "triton-workspace"), self.answer]

    def env(self) -> dict[str, str]:
        # Triton's Python backend stub links libpython3.X.so.1.0 and finds the system's first (Debian's 3.11.2
        # here), which then runs the virtualenv's standard library (3.11.7) and fails inside multiprocessing
        # ("'_thread.RLock' object has no attribute '_recursion_count'"): point it at the interpreter's own.
        libdir = subprocess.run([str(self.py), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True).stdout.strip()
        path = os.pathsep.join(filter(None, (libdir, os.environ.get("LD_LIBRARY_PATH"))))
        return {**super().env(), "LD_LIBRARY_PATH": path}

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM PyTriton's process alone first and wait for its whole group to go: it stops tritonserver,
        which unloads the model and removes the copy of it it made in /tmp. PyTriton itself exits at once, so
        the group's SIGKILL in `Server.stop` would cut tritonserver's shutdown short and leave that folder."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                time.sleep(0.2)
        super().stop(timeout)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of the group is left."""
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


class TritonTensors(Triton):
    """The iris model answering the session's own outputs (FP32 scores, INT64 label): the V2 figure's Triton."""

    answer = "tensors"


KINDS: dict[str, type[StackServer]] = {"granian": Granian, "uvicorn": Uvicorn, "litserve": LitServe, "triton": Triton}


def start(name: str, model_file: Path, work: Path) -> tuple[StackServer | None, str]:
    """(the stack's server, started, "") or (None, why it cannot run here: its install failed)."""
    stack = STACKS[name]
    py, why = servers.ensure_venv(name, list(stack.pins), work / f"{name}-install.log")
    if py is None:
        return None, why
    return KINDS[name](stack, py, model_file, work).start(), ""
