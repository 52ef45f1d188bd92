#!/usr/bin/env python
"""Benchmark: onnxruntime's thread-pool spinning on the replica's hot path, on and off.

Two replicas of the ONNX example's iris model served under three names (one worker, 2 threads): one with
onnxruntime's default (its thread pools spin between runs), one with spinning off (the replica's default,
`workers/onnx_client.py`). For each, in interleaved rounds: wrk on one model and on the three in rotation,
req/s, p50/p99, and the worker's CPU seconds per 1,000 requests (idle spinning counts, as it takes a core
from whatever else the machine runs).

    .venv/bin/python scripts/bench_onnx_settings.py --rounds 3 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import model_factory  # noqa: E402
from scripts.bench_lib import figures, load  # noqa: E402
from tests.helpers import write_api  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402

PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        return self.client.predict({"input": payload["input"]}, query_params["model"])
"""
BODY = json.dumps({"input": [[5.1, 3.5, 1.4, 0.2]]})
SETTINGS = {"spinning (onnxruntime's default)": {"session.intra_op.allow_spinning": "1",
                                                 "session.inter_op.allow_spinning": "1"},
            "no spinning (the replica's default)": {}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        work = Path(tmp)
        for name in ("a", "b", "c"):
            model_factory.write_onnx_linear(work / "models" / name / "1" / "model.onnx", model_factory.IRIS_WEIGHTS,
                                            model_factory.IRIS_BIAS)
        replicas = {}
        for tag, entries in SETTINGS.items():
            folder = work / str(len(replicas))
            spec = write_api(folder, PREDICTOR, type="onnx", models={"dir": str(work / "models")},
                             threads_per_process=2, config={"onnx_session_config": entries} if entries else None)
            replicas[tag] = ReplicaProcess(spec, folder / "state", poll_interval=5).start()
        try:
            for r in replicas.values():
                r.wait_ready(timeout=120)
            results: dict = {tag: {"one model": [], "three models": []} for tag in replicas}
            for _ in range(args.rounds):
                for tag, r in replicas.items():
                    for figure, paths in (("one model", ["/?model=a"]),
                                          ("three models", ["/?model=a", "/?model=b", "/?model=c"])):
                        pids = r.worker_pids()
                        before = sum(figures.worker_cpu_s(pids))
                        res = load.run(r.base, BODY, paths, duration=args.seconds, connections=4).as_dict()
                        res["cpu_ms_per_request"] = 1000 * (sum(figures.worker_cpu_s(pids)) - before) / max(res["requests"], 1)
                        results[tag][figure].append(res)
                        print(tag, figure, json.dumps(res), flush=True)
                time.sleep(0.5)
        finally:
            for r in replicas.values():
                r.stop()
    for tag, by_figure in results.items():
        for figure, rows in by_figure.items():
            rps = [r["rps"] for r in rows]
            print(f"| {tag} | {figure} | {statistics.median(rps):.0f} ({min(rps):.0f}) | "
                  f"{statistics.median(r['p50_ms'] for r in rows):.2f} ms | "
                  f"{statistics.median(r['p99_ms'] for r in rows):.2f} ms | "
                  f"{statistics.median(r['cpu_ms_per_request'] for r in rows):.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
