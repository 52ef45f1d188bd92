#!/usr/bin/env python
"""Benchmark: the resident memory a worker keeps after unloading a large model, per framework, and what
`malloc_trim(0)` (which the replica calls after every unload) gives back.

For numpy (`np.load`), ONNX (an InferenceSession over one large initializer), TensorFlow (a SavedModel with
one large variable) and PyTorch (a module with one large parameter), each in a fresh process: the resident set
after the framework's import, after the load, after the model's references are dropped and a full collection
ran, and after `malloc_trim(0)`; and the measured size of the load (workers/memory.py). Three loads and
unloads in a row, since what a framework keeps shows on the second.

    .venv/bin/python scripts/bench_unload.py --mib 200
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1 << 20
FRAMEWORKS = ("numpy", "onnx", "tensorflow", "pytorch")


def _make(framework: str, folder: Path, mib: int) -> Path:
    import numpy as np

    floats = mib * MiB // 4
    if framework == "numpy":
        path = folder / "weights.npy"
        np.save(path, np.ones(floats, dtype=np.float32))
    elif framework == "onnx":
        from tests.test_memory_budget import _gather_onnx

        path = folder / "model.onnx"
        _gather_onnx(path, floats)
    elif framework == "tensorflow":
        import tensorflow as tf

        module = tf.Module()
        module.w = tf.Variable(tf.ones([floats]))
        module.f = tf.function(lambda i: tf.gather(module.w, i), input_signature=[tf.TensorSpec([1], tf.int64)])
        path = folder / "saved"
        tf.saved_model.save(module, str(path))
    else:
        import torch

        path = folder / "model.pt"
        torch.save(torch.nn.Parameter(torch.ones(floats)), path)
    return path


def _import(framework: str) -> None:
    __import__({"numpy": "numpy", "onnx": "onnxruntime", "tensorflow": "tensorflow", "pytorch": "torch"}[framework])


def _load(framework: str, path: Path):
    if framework == "numpy":
        import numpy as np

        return np.load(path)
    if framework == "onnx":
        import onnxruntime as ort

        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if framework == "tensorflow":
        import tensorflow as tf

        return tf.saved_model.load(str(path))
    import torch

    return torch.load(path, weights_only=True)


def child(framework: str, path: Path) -> dict:
    """In a process that did not make the model (a framework's allocator would reuse what making it freed)."""
    from workers import memory

    _import(framework)
    gc.collect()
    memory.give_back()
    rows = {"imported_mib": memory.rss() / MiB, "loads": []}
    for _ in range(3):
        with memory.measuring() as grown:
            model = _load(framework, path)
        loaded = memory.rss()
        del model
        gc.collect()
        dropped = memory.rss()
        memory.give_back()
        rows["loads"].append({"measured_mib": grown.bytes / MiB, "loaded_mib": loaded / MiB,
                              "dropped_mib": dropped / MiB, "trimmed_mib": memory.rss() / MiB})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--only", nargs="+", choices=FRAMEWORKS, default=FRAMEWORKS)
    ap.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child and args.make:
        print("MADE " + str(_make(args.child, args.make, args.mib)))
        return 0
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.measure)))
        return 0
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for framework in args.only:
        with tempfile.TemporaryDirectory() as tmp:
            made = subprocess.run([sys.executable, __file__, "--child", framework, "--make", tmp, "--mib",
                                   str(args.mib)], capture_output=True, text=True, env=env)
            path = next((ln[5:] for ln in made.stdout.splitlines() if ln.startswith("MADE ")), None)
            if path is None:
                print(f"{framework}: could not make the model: {made.stderr[-1500:]}")
                continue
            out = subprocess.run([sys.executable, __file__, "--child", framework, "--measure", path],
                                 capture_output=True, text=True, env=env)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{framework}: failed: {out.stderr[-1500:]}")
            continue
        r = json.loads(line[7:])
        for i, load in enumerate(r["loads"], 1):
            print(f"{framework} load {i}: imported {r['imported_mib']:.0f} MiB, measured {load['measured_mib']:.0f}, "
                  f"loaded {load['loaded_mib']:.0f}, dropped {load['dropped_mib']:.0f}, "
                  f"trimmed {load['trimmed_mib']:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
