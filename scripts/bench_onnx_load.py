#!/usr/bin/env python
"""Benchmark: what an ONNX version costs to load, and to run, with its weights embedded or mapped
(supervisor/onnx_weights.py) and with onnxruntime's weight pre-packing on or off.

For each model size (a chain of square float32 MatMul layers), in interleaved rounds, in this process:
session creation plus the first run (page cache warm: what a disk hit and a restart pay), for the file as
downloaded (embedded) and as installed (mapped), pre-packing on (onnxruntime's default and the replica's) and
off (`session.disable_prepacking`); then the hot path, the mean time of one run at batch 1 and batch 32,
pre-packing on, off, and after serving (the replica's default: the session its own loader hands over once
the worker's packer has swapped the pre-packed one in, workers/onnx_prepack.py). Median and worst round.
Spinning is off throughout (the replica's default).

    .venv/bin/python scripts/bench_onnx_load.py --sizes 50 300 --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.model_factory import ONNX_IR_VERSION, ONNX_OPSET  # noqa: E402
from supervisor.onnx_weights import rewrite  # noqa: E402

DIM = 2048  # each layer's weight is DIM x DIM float32 (16 MiB)
RUNS = 20


def write_chain(path: Path, mib: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = max(1, round(mib * (1 << 20) / (DIM * DIM * 4)))
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((DIM, DIM)) * 0.02).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", DIM])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def session(path: Path, prepacking: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.add_session_config_entry("session.disable_prepacking", "0" if prepacking else "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_seconds(path: Path, prepacking: bool) -> float:
    x = np.ones((1, DIM), dtype=np.float32)
    started = time.perf_counter()
    s = session(path, prepacking)
    s.run(None, {"x": x})
    return time.perf_counter() - started


def after_serving(path: Path):
    """The session the replica's loader serves from once its pre-packed session has been swapped in: `path`'s
    folder installed as version 1 of a disk tree beside it, loaded as a worker loads it."""
    from replica.disktree import DiskTree
    from replica.quarantine import LoadMarks
    from workers.onnx_client import SESSION_CONFIG, onnx_loader
    from workers.onnx_prepack import Packer

    tree = DiskTree(path.parent.parent / "tree", runtime=path.parent.parent / "run")
    tree.prepare()
    if tree.manifest("m", 1) is None:
        staging = tree.new_staging_dir("m", 1)
        for f in path.parent.iterdir():
            shutil.copy(f, staging / f.name)
        tree.install(staging, "m", 1, {"fingerprint": "bench", "files": []})
    packer = Packer(tree, LoadMarks(tree.workers_dir))
    with tree.read_lock("m", 1):
        model = onnx_loader(["CPUExecutionProvider"], SESSION_CONFIG, packer)(str(tree.version_dir("m", 1)), "m", 1)
    if not packer.wait_idle(timeout=600):
        raise RuntimeError("the version was not pre-packed within 10 minutes")
    return model["session"]


def run_ms(path: Path, prepacking: bool | str, batch: int) -> float:
    s = after_serving(path) if prepacking == "after serving" else session(path, prepacking)
    x = np.random.default_rng(1).standard_normal((batch, DIM)).astype(np.float32)
    s.run(None, {"x": x})
    started = time.perf_counter()
    for _ in range(RUNS):
        s.run(None, {"x": x})
    return (time.perf_counter() - started) / RUNS * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 300], help="model sizes in MiB")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-load-") as tmp:
        work = Path(tmp)
        files = {}
        for mib in args.sizes:
            embedded = work / f"{mib}" / "embedded" / "model.onnx"
            write_chain(embedded, mib)
            mapped = work / f"{mib}" / "mapped" / "model.onnx"
            mapped.parent.mkdir(parents=True)
            shutil.copy(embedded, mapped)
            rewrite(mapped)
            files[mib] = {"embedded": embedded, "mapped": mapped}
        for _ in range(args.rounds):
            for mib, pair in files.items():
                for layout, path in pair.items():
                    for prepacking in (True, False):
                        results.setdefault((mib, "load", layout, prepacking), []).append(load_seconds(path, prepacking))
                for batch in (1, 32):
                    for prepacking in (True, False, "after serving"):
                        results.setdefault((mib, f"run b{batch}", "mapped", prepacking), []).append(
                            run_ms(pair["mapped"], prepacking, batch))
    print("| model | measure | weights | pre-packing | median | worst |")
    print("|---|---|---|---|---|---|")
    for (mib, what, layout, prepacking), values in results.items():
        unit = "s" if what == "load" else "ms"
        fmt = (lambda v: f"{v:.3f} s") if unit == "s" else (lambda v: f"{v:.1f} ms")
        packing = prepacking if isinstance(prepacking, str) else "on" if prepacking else "off"
        print(f"| {mib} MiB | {'session + first run' if what == 'load' else what + ' (one run)'} | {layout} | "
              f"{packing} | {fmt(statistics.median(values))} | {fmt(max(values))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
