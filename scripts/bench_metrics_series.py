#!/usr/bin/env python
"""Benchmark: how many series a worker's /metrics holds with a big catalogue, per `--metrics-model-labels`.

For each setting, in a fresh process with the setting in its environment (as a worker has it): every model of
a catalogue of `--models` is loaded once and answers one request with 200 and one with 503, through the
worker's own metrics functions (workers/metrics.py); then the exposition is counted (sample lines, not
comments).

    .venv/bin/python scripts/bench_metrics_series.py --models 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("all", "counters", "none")


def child(models: int) -> int:
    sys.path.insert(0, str(ROOT))
    from prometheus_client import REGISTRY, generate_latest

    from workers import metrics

    for i in range(models):
        name = f"model-{i:05d}"
        metrics.LOADS.labels(metrics.model_label(name)).inc()
        metrics.LOAD_SECONDS.observe(0.05)
        metrics.observe_request(name, "1", 200, 0.004)
        metrics.observe_request(name, "1", 503, 0.001)
    text = generate_latest(REGISTRY).decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(child(args.models))
        return 0
    print("| --metrics-model-labels | series at %d models |" % args.models)
    print("|---|---|")
    for setting in SETTINGS:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env["REPLICA_METRICS_MODEL_LABELS"] = setting
        out = subprocess.run([sys.executable, __file__, "--child", "--models", str(args.models)], env=env,
                             capture_output=True, text=True, check=True)
        print(f"| `{setting}` | {int(out.stdout.strip()):,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
