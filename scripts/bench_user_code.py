#!/usr/bin/env python
"""Benchmark: model caching under misses and user code, this checkout beside another revision.

Four figures, each measured on real replicas (`replica serve`, one worker, python predictors over one-file
models in a local `models.dir`), with clients on threads of this process:

- churn: an ensemble-style predictor that calls `get_model` from its own ThreadPoolExecutor, 8 clients over 3
  models with `cache_size: 1`: requests answered 200 in the run (with the pool submitting plainly, with
  `contextvars.copy_context`, and without the pool), and requests that failed (non-2xx or timeouts);
- hot: 64 clients over 200 models (`cache_size: 2`, 8 threads), 16 of them asking for one hot model, the rest
  for cold ones at random: the hot model's p50/p99 and the cold ones';
- uniform: 16 clients over 2,000 models (`cache_size: 200`, `disk_cache_size: 1000`): req/s, p50, p99;
- miss cost: sequential misses in the 2,000-model catalogue, first into free slots (a load alone), then each
  evicting one (an evicting miss): median milliseconds of each.

Revisions run in interleaved rounds (base, this, base, this, ...); `--base REV` is checked out into a git
worktree. Every replica started is stopped by PID.

    .venv/bin/python scripts/bench_user_code.py --base 3311630 --rounds 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from scripts.bench_lib import load  # noqa: E402
from tests.helpers import write_api  # noqa: E402
from tests.predictors import json_predictor  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402

PLAIN = json_predictor("""
def predict(self, query_params):
    return {"name": self.client.get_model(query_params["model"])["name"]}
""")

ENSEMBLE = """import concurrent.futures
import contextvars
import json
import os


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.pool = concurrent.futures.ThreadPoolExecutor(4)
        self.mode = config["mode"]

    def load_model(self, model_path):
        with open(os.path.join(model_path, "model.json")) as f:
            return json.load(f)

    def predict(self, query_params):
        name = query_params["model"]
        if self.mode == "none":
            return {"name": self.client.get_model(name)["name"]}
        if self.mode == "context":
            future = self.pool.submit(contextvars.copy_context().run, self.client.get_model, name)
        else:
            future = self.pool.submit(self.client.get_model, name)
        return {"name": future.result()["name"]}
"""


def catalogue(folder: Path, n: int) -> Path:
    for i in range(n):
        (folder / f"m{i:04d}").mkdir(parents=True, exist_ok=True)
        (folder / f"m{i:04d}" / "model.json").write_text(json.dumps({"name": f"m{i:04d}"}))
    return folder


def start(work: Path, tag: str, checkout: Path, source: str, models: dict, **keys) -> ReplicaProcess:
    folder = work / f"{tag}-{time.monotonic_ns()}"
    spec = write_api(folder, source, type="python", models=models, processes_per_replica=1, **keys)
    r = ReplicaProcess(spec, folder / "state", cwd=checkout, env={"PYTHONPATH": str(checkout)}, poll_interval=5)
    r.start()
    r.wait_ready(timeout=180)
    return r


def load_together(base: str, groups: dict[str, tuple[list[str], int]], seconds: float) -> dict[str, dict]:
    """Run one wrk per group (name -> (paths, connections)) at the same time; each group's result."""
    with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
        futures = {name: pool.submit(load.run, base, "{}", paths, duration=seconds, connections=conns)
                   for name, (paths, conns) in groups.items()}
        return {name: f.result().as_dict() for name, f in futures.items()}


def paths(names) -> list[str]:
    return [f"/?model={n}" for n in names]


def churn(work: Path, checkout: Path, tag: str, mode: str, seconds: float) -> dict:
    models = catalogue(work / "churn-models", 3)
    r = start(work, tag, checkout, ENSEMBLE, {"dir": str(models), "cache_size": 1, "disk_cache_size": 3},
              threads_per_process=8, config={"mode": mode})
    try:
        res = load_together(r.base, {"all": (paths(f"m{i:04d}" for i in range(3)), 8)}, seconds)["all"]
    finally:
        r.stop()
    return {"ok": res["requests"] - res["failed"], "failed": res["failed"]}


def hot(work: Path, checkout: Path, tag: str, seconds: float) -> dict:
    models = catalogue(work / "hot-models", 200)
    r = start(work, tag, checkout, PLAIN, {"dir": str(models), "cache_size": 2, "disk_cache_size": 200},
              threads_per_process=8)
    try:
        res = load_together(r.base, {"hot": (paths(["m0000"]), 16),
                                     "cold": (paths(f"m{i:04d}" for i in range(1, 200)), 48)}, seconds)
    finally:
        r.stop()
    return res


def uniform(work: Path, checkout: Path, tag: str, seconds: float) -> dict:
    models = catalogue(work / "big-models", 2000)
    r = start(work, tag, checkout, PLAIN, {"dir": str(models), "cache_size": 200, "disk_cache_size": 1000},
              threads_per_process=8)
    try:
        # The miss cost first, on the fresh replica: 200 misses into free slots, then 100 that each evict.
        s = requests.Session()

        def miss(i: int) -> float:
            t = time.monotonic()
            assert s.post(f"{r.base}/?model=m{i:04d}", json={}, timeout=30).status_code == 200
            return time.monotonic() - t

        alone = [miss(i) for i in range(200)]
        evicting = [miss(i) for i in range(200, 300)]
        res = load_together(r.base, {"all": (paths(f"m{i:04d}" for i in range(2000)), 16)}, seconds)["all"]
    finally:
        r.stop()
    return {**res, "load_alone_ms": 1000 * statistics.median(alone), "evicting_ms": 1000 * statistics.median(evicting)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the revision to compare with (checked out in a worktree)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--only", nargs="+", choices=("churn", "hot", "uniform"), default=("churn", "hot", "uniform"),
                    help="the figures to measure (default: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-user-code-") as tmp:
        work = Path(tmp)
        base = work / "base-checkout"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            checkouts = {"base": base, "this": ROOT}
            results: dict = {}
            for n in range(args.rounds):
                for tag, checkout in checkouts.items():
                    row = {}
                    if "churn" in args.only:
                        row["churn pool"] = churn(work, checkout, tag, "plain", args.seconds)
                    if "hot" in args.only:
                        row["hot"] = hot(work, checkout, tag, args.seconds)
                    if "uniform" in args.only:
                        row["uniform"] = uniform(work, checkout, tag, args.seconds)
                    if tag == "this" and "churn" in args.only:
                        row["churn context"] = churn(work, checkout, tag, "context", args.seconds)
                        row["churn no pool"] = churn(work, checkout, tag, "none", args.seconds)
                    results.setdefault(tag, []).append(row)
                    print(f"round {n + 1} {tag}: {json.dumps(row)}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
