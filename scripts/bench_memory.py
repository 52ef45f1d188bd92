#!/usr/bin/env python
"""Benchmark: one memory budget expressed as a count (`cache_size`) and as bytes (`cache_memory`).

A catalogue of numpy models (`np.load`) whose sizes follow a long-tailed (Pareto) distribution, Zipf traffic
over them (wrk over a path list weighted by popularity), and the same memory budget given two ways: as the
count of models that fits it when each is the largest, and as `cache_memory`. For each, in interleaved
rounds: the memory hit rate (from /metrics), req/s, p50/p99, and the worker's peak resident memory (sampled
every 0.2 s). Every replica started is stopped by PID.

    .venv/bin/python scripts/bench_memory.py --models 200 --budget-mib 256 --rounds 2 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from scripts.bench_lib import load  # noqa: E402
from tests.helpers import write_api  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402

MiB = 1 << 20
PREDICTOR = """
import os

import numpy as np


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        return np.load(os.path.join(model_path, "weights.npy"))

    def predict(self, query_params):
        return {"first": float(self.client.get_model(query_params["model"])[0])}
"""


def catalogue(folder: Path, n: int, largest_mib: int, seed: int = 5) -> dict[str, int]:
    """n models, sizes Pareto-distributed from 1 MiB and capped at `largest_mib` (one of them that large)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(np.ceil(rng.pareto(1.2, n) + 1), largest_mib).astype(int)
    sizes[rng.integers(n)] = largest_mib
    out = {}
    for i, mib in enumerate(sizes):
        name = f"m{i:03d}"
        (folder / name).mkdir(parents=True, exist_ok=True)
        np.save(folder / name / "weights.npy", np.ones(int(mib) * MiB // 8))
        out[name] = int(mib)
    return out


def zipf_paths(names: list[str], s: float = 1.1, length: int = 4000, seed: int = 9) -> list[str]:
    """A path list in which each model appears in proportion to its Zipf weight (rank order shuffled, so the
    popular models are not the large ones by construction)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    weights = 1.0 / np.arange(1, len(names) + 1) ** s
    counts = np.maximum(1, np.round(weights / weights.sum() * length)).astype(int)
    return [f"/?model={names[order[rank]]}" for rank, c in enumerate(counts) for _ in range(c)]


def peak_rss(r: ReplicaProcess, stop: threading.Event, out: list[int]) -> None:
    while not stop.wait(0.2):
        for pid in r.worker_pids():
            try:
                out.append(psutil.Process(pid).memory_info().rss)
            except psutil.NoSuchProcess:
                pass


def counter(text: str, name: str) -> float:
    m = re.search(rf"^{name}_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def run(work: Path, models: Path, bound: dict, paths: list[str], seconds: float, tag: str) -> dict:
    folder = work / f"{tag}-{time.monotonic_ns()}"
    spec = write_api(folder, PREDICTOR, type="python", models={"dir": str(models), **bound},
                     processes_per_replica=1, threads_per_process=4)
    r = ReplicaProcess(spec, folder / "state", poll_interval=5).start()
    try:
        r.wait_ready(timeout=180)
        start = max(psutil.Process(p).memory_info().rss for p in r.worker_pids())
        stop, samples = threading.Event(), []
        sampler = threading.Thread(target=peak_rss, args=(r, stop, samples))
        sampler.start()
        try:
            res = load.run(r.base, "{}", paths, duration=seconds, connections=8).as_dict()
        finally:
            stop.set()
            sampler.join()
        text = r.get("/metrics").text
        hits, misses = counter(text, "replica_cache_hits"), counter(text, "replica_cache_misses")
    finally:
        r.stop()
    return {**res, "hit_rate": hits / max(hits + misses, 1), "peak_rss_mib": max(samples, default=0) / MiB,
            "start_rss_mib": start / MiB}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--budget-mib", type=int, default=256)
    ap.add_argument("--largest-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        sizes = catalogue(work / "models", args.models, args.largest_mib)
        paths = zipf_paths(sorted(sizes))
        count = max(1, args.budget_mib // args.largest_mib)
        bounds = {f"cache_size: {count}": {"cache_size": count, "disk_cache_size": args.models},
                  f"cache_memory: {args.budget_mib}Mi": {"cache_memory": f"{args.budget_mib}Mi",
                                                        "disk_cache_size": args.models}}
        print(f"catalogue: {len(sizes)} models, {sum(sizes.values())} MiB in all, median "
              f"{int(np.median(list(sizes.values())))} MiB, largest {max(sizes.values())} MiB", flush=True)
        results: dict = {}
        for n in range(args.rounds):
            for tag, bound in bounds.items():
                row = run(work, work / "models", bound, paths, args.seconds, tag.split(":")[0])
                results.setdefault(tag, []).append(row)
                print(f"round {n + 1} {tag}: {json.dumps(row)}", flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
