"""Where a worker's time goes under load: CPU time per request of the serving processes (psutil), and a
py-spy sample of one worker, grouped by the code it was in (gunicorn, Flask/Werkzeug, the replica's own
`workers/` and `replica/` code, the predictor, onnxruntime, JSON, other)."""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from scripts.bench_lib import load, models

# (category, substrings of a frame's "function (file:line)"), checked from the innermost frame outwards.
CATEGORIES = [
    ("onnxruntime", ("onnxruntime",)),
    ("prometheus_client (the replica's /metrics)", ("prometheus_client/",)),
    ("predictor (user code)", ("(predictor.py", "bench_floor_app.py")),
    ("replica (workers/, replica/)", ("(workers/", "(replica/")),
    ("Flask / Werkzeug", ("flask/", "werkzeug/")),
    ("gunicorn", ("gunicorn/",)),
    ("numpy / json", ("numpy/", "json/")),
]
WAIT = ("select (selectors.py", "poll (selectors.py", "wait (threading.py", "sleep")


def categorize(stack: list[str]) -> str:
    if any(w in stack[-1] for w in WAIT) or not stack[-1].strip():
        return "waiting"
    for frame in reversed(stack):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other (stdlib, threads)"


def pyspy(pid: int, seconds: float) -> tuple[dict[str, float], str]:
    """Share of busy samples per category ({} and why, when py-spy cannot attach)."""
    exe = Path(sys.executable).parent / "py-spy"
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        out = f.name
    proc = subprocess.run([str(exe), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw",
                           "-o", out, "--nonblocking"], capture_output=True, text=True)
    counts: collections.Counter = collections.Counter()
    try:
        for line in Path(out).read_text().splitlines():
            stack, n = line.rsplit(" ", 1)
            counts[categorize(stack.split(";"))] += int(n)
    except (OSError, ValueError):
        pass
    counts.pop("waiting", None)
    total = sum(counts.values())
    if not total:
        return {}, f"py-spy recorded nothing (exit {proc.returncode}: {proc.stderr.strip()[-300:]})"
    return {k: v / total for k, v in counts.most_common()}, ""


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree(pid: int) -> list[int]:
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def under_load(base: str, worker_pids: list[int], root_pid: int, *, duration: float = 8.0, spy: bool = True) -> dict:
    """Drive `base` with wrk for `duration` s; CPU microseconds per request of the workers and of every process
    of the server (`root_pid` and its descendants), and a py-spy breakdown of the first worker over the middle
    of the run."""
    result: dict = {}

    def spy_run():
        time.sleep(1)
        result["categories"], result["pyspy_error"] = pyspy(worker_pids[0], duration - 2)

    t = threading.Thread(target=spy_run)
    everything = tree(root_pid)
    before, before_all = cpu_seconds(worker_pids), cpu_seconds(everything)
    if spy:
        t.start()
    res = load.run(base, models.SAMPLE, ["/"], duration=duration, connections=8)
    after, after_all = cpu_seconds(worker_pids), cpu_seconds(everything)
    if spy:
        t.join()
    result["rps"] = res.rps
    result["cpu_us_per_request"] = (after - before) / max(res.requests, 1) * 1e6
    result["all_cpu_us_per_request"] = (after_all - before_all) / max(res.requests, 1) * 1e6
    return result
