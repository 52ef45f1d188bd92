"""The servers the hot-path figure compares, each on a free port on 127.0.0.1 and stopped by PID:

- `Floor`: a bare gunicorn + Flask app (`scripts/bench_floor_app.py`), as gthread (the flags the replica had
  before its own worker class) or as plain `gunicorn -w N` (sync workers);
- `MLServer`: Seldon MLServer with `parallel_workers` workers and a custom ONNX runtime
  (`scripts/mlserver_runtime/`), from its own virtualenv (`ensure_venv`, created on first use).

The limit stacks (granian, uvicorn, LitServe, Triton) are in `stacks.py`; the replica itself runs through
`tests.replica_proc.ReplicaProcess`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from filelock import FileLock

from tests.replica_proc import free_port

ROOT = Path(__file__).resolve().parents[2]
# Peers' virtualenvs live in a cache folder, not in the work tree: every checkout and worktree of the project
# shares them, and `git clean` does not throw away a 1 GB install. $BENCH_VENV_DIR moves them.
VENV_DIR = Path(os.environ.get("BENCH_VENV_DIR")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "model-replica" / "bench-venvs")
# MLServer pins protobuf below 7, which clashes with onnx and TensorFlow: it gets its own virtualenv.
# uvloop 0.23 crashes MLServer 1.7.1 at start with parallel workers ("There is no current event loop").
MLSERVER_PINS = ["mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime==1.32.0", "numpy==2.4.6"]
V2_BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                  "data": [5.1, 3.5, 1.4, 0.2]}]})


class Server:
    """A process in its own session, ready when GET `ready_path` answers 200."""

    ready_path = "/"

    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _popen(self, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     cwd=cwd, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.base + self.ready_path, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the process group by the leader's PID (its session), SIGKILL what is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(pgid, signal.SIGKILL)  # workers that outlived their master
        except ProcessLookupError:
            pass
        self._log.close()
        self.proc = None


class Floor(Server):
    """gunicorn + Flask + onnxruntime, nothing else. `worker_class="gthread"` (1 thread, keep-alive 5 s) is the
    hot path's floor: the flags the replica ran with before it had its own worker class. `"sync"` is plain
    `gunicorn -w N`, which closes every connection after its response, so the kernel spreads the load over the
    workers: the floor of the keep-alive spread figure."""

    ready_path = "/readyz"

    def __init__(self, model_file: Path, workers: int, work: Path, worker_class: str = "gthread"):
        super().__init__(f"floor-{worker_class}-{workers}", work / f"floor-{worker_class}-{workers}.log")
        self.model_file, self.workers, self.worker_class = model_file, workers, worker_class

    def start(self) -> "Floor":
        flags = (["--worker-class", "gthread", "--threads", "1", "--keep-alive", "5"]
                 if self.worker_class == "gthread" else [])
        self._popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                     "--workers", str(self.workers), *flags, "--backlog", "2048", "--log-level", "warning",
                     "scripts.bench_floor_app:app"],
                    env={"BENCH_ONNX_MODEL": str(self.model_file), "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        return self


def ensure_venv(name: str, pins: list[str], log_path: Path) -> tuple[Path | None, str]:
    """(the python of the virtualenv VENV_DIR/name with exactly `pins` installed, "") or (None, why not).

    Peers get a virtualenv each, never the project's: their pins clash with the project's (MLServer's protobuf,
    PyTriton's numpy < 2) and with each other, and a peer must not run with the project's packages imported
    or installed. Created on first use, reused while `pins` are the same (a stamp file holds them); a file lock
    keeps two benchmark runs (two worktrees) from installing into one at the same time."""
    folder = VENV_DIR / name
    py, stamp, want = folder / "bin" / "python", folder / ".installed", " ".join(pins)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if py.exists() and stamp.exists() and stamp.read_text() == want:
            return py, ""
        with open(log_path, "ab") as log:
            try:
                if not py.exists():
                    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, stdout=log, stderr=log)
                subprocess.run([str(py), "-m", "pip", "install", "--quiet", *pins], check=True,
                               stdout=log, stderr=log, timeout=1200)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
                return None, f"could not install {want} into {folder} ({e}){_pip_error(log_path)}; see {log_path}"
        stamp.write_text(want)
    return py, ""


def _pip_error(log_path: Path) -> str:
    """pip's own words for a failed install (its ERROR lines and the conflict it names), for the notes."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
             if ln.startswith("ERROR:") or " depends on " in ln]
    return ": " + " ".join(lines[-4:]) if lines else ""


def ensure_mlserver_venv(log_path: Path) -> tuple[Path | None, str]:
    """(the MLServer virtualenv's python, "") or (None, why it could not be set up)."""
    return ensure_venv("mlserver", MLSERVER_PINS, log_path)


def mlserver_version(py: Path) -> str:
    out = subprocess.run([str(py), "-c", "import mlserver; print(mlserver.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


class MLServer(Server):
    """`mlserver start` on a folder holding settings.json and one model: by default the iris model through the
    iris runtime (the hot path's), or `model` through any runtime of `scripts/mlserver_runtime/runtime.py`
    (`implementation`, such as "runtime.ONNXTensorRuntime")."""

    def __init__(self, py: Path, model_file: Path, workers: int, work: Path, *, model: str = "iris",
                 implementation: str = "runtime.ONNXIrisRuntime"):
        super().__init__(f"mlserver-{model}-{workers}", work / f"mlserver-{model}-{workers}.log")
        self.py, self.model_file, self.workers = py, model_file, workers
        self.model, self.implementation = model, implementation
        self.folder = work / f"mlserver-{model}-{workers}"

    @property
    def ready_path(self) -> str:  # type: ignore[override]
        return f"/v2/models/{self.model}/ready"

    def start(self) -> "MLServer":
        model_dir = self.folder / self.model
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "scripts" / "mlserver_runtime" / "runtime.py", self.folder / "runtime.py")
        (self.folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(),
            # Its metrics server stays on (the default), as the replica's /metrics does.
            "parallel_workers": self.workers, "debug": False,
        }))
        (model_dir / "model-settings.json").write_text(json.dumps({
            "name": self.model, "implementation": self.implementation,
            "parameters": {"uri": str(self.model_file)},
        }))
        self._popen([str(self.py.parent / "mlserver"), "start", str(self.folder)], cwd=self.folder,
                    env={"PYTHONPATH": str(self.folder)})
        return self
