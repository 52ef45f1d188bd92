#!/usr/bin/env python
"""Benchmark: cold starts from S3, beside their floors measured in the same rounds.

A SeaweedFS on 127.0.0.1 (started and stopped here) holds ONNX models of 50 MiB, 300 MiB and 1 GiB (chains of
2048 x 2048 float32 MatMul layers, weights embedded as exported), a 300 MiB TensorFlow SavedModel and a 300 MiB
NumPy array (loaded with `np.load(mmap_mode="r")`), with small filler models of each type. One replica per
type, `cache_size: 2`, `disk_cache_size: 3`, 4 request threads (with one, a request waits for the one before
it, a miss included), and a second ONNX replica with `session.disable_prepacking`.
For each model, in each round:

- full miss: neither in memory nor on disk (three fillers pushed it out): the request's wall time;
- memory hit: the next request;
- disk hit: after a filler took its memory slot, on disk still;
- floors: one GET stream of its files, parallel ranged GETs (16 MiB parts, 8 in flight), `cat` of the installed
  copy to /dev/null, and creating the session (TensorFlow: loading the SavedModel; NumPy: mapping the array)
  from the installed copy in this process.

For the 1 GiB ONNX model a small model in the same replica is asked continuously during its full miss, and
its p99 compared with the same load while nothing else happens. Median and worst of the rounds, and the
issue's targets for the 1 GiB model: full miss <= 1.3 x the best download floor + 0.2 s, disk hit <= 0.3 s, the
memory-hit model's p99 during the miss <= 2 x idle. Every server started is stopped by PID.

    .venv/bin/python scripts/bench_cold.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from scripts import model_factory  # noqa: E402
from scripts.bench_onnx_load import DIM, write_chain  # noqa: E402
from tests.helpers import write_api  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402
from tests.s3server import SeaweedS3  # noqa: E402

MiB = 1 << 20
BUCKET = "models"
PART = 16 * MiB
IN_FLIGHT = 8

PREDICTORS = {
    "onnx": """
import numpy as np


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        name = query_params["model"]
        if name == "hot":
            return {"label": int(self.client.predict(np.asarray([[5.1, 3.5, 1.4, 0.2]], np.float32), name)[1][0])}
        self.client.get_model(name)
        return {"ok": name}
""",
    "tensorflow": """
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        self.client.get_model(query_params["model"])
        return {"ok": query_params["model"]}
""",
    "python": """
import os

import numpy as np


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        return np.load(os.path.join(model_path, "weights.npy"), mmap_mode="r")

    def predict(self, payload, query_params):
        self.client.get_model(query_params["model"])
        return {"ok": query_params["model"]}
""",
}


def write_tf_big(directory: Path, mib: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    layers = max(1, round(mib * MiB / (DIM * DIM * 4)))

    class Chain(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            self.ws = [tf.Variable((rng.standard_normal((DIM, DIM)) * 0.02).astype(np.float32)) for _ in range(layers)]

        @tf.function(input_signature=[tf.TensorSpec([None, DIM], tf.float32)])
        def serve(self, x):
            for w in self.ws:
                x = tf.matmul(x, w)
            return {"y": x}

    module = Chain()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})


def build(work: Path) -> dict[str, dict[str, Path]]:
    """type -> model name -> local folder (version 1 inside), written once."""
    out: dict[str, dict[str, Path]] = {"onnx": {}, "tensorflow": {}, "python": {}}
    for mib in (50, 300, 1024):
        write_chain(work / "onnx" / f"onnx{mib}" / "1" / "model.onnx", mib)
        out["onnx"][f"onnx{mib}"] = work / "onnx" / f"onnx{mib}"
    for name in ("hot", "f1", "f2", "f3"):
        model_factory.write_onnx_linear(work / "onnx" / name / "1" / "model.onnx", model_factory.IRIS_WEIGHTS,
                                        model_factory.IRIS_BIAS)
        out["onnx"][name] = work / "onnx" / name
    write_tf_big(work / "tensorflow" / "tf300" / "1", 300)
    out["tensorflow"]["tf300"] = work / "tensorflow" / "tf300"
    for name in ("f1", "f2", "f3"):
        model_factory.write_tf_linear(work / "tensorflow" / name / "1", model_factory.IRIS_WEIGHTS,
                                      model_factory.IRIS_BIAS, extra_signature=False)
        out["tensorflow"][name] = work / "tensorflow" / name
    for name, mib in (("np300", 300), ("f1", 1), ("f2", 1), ("f3", 1)):
        (work / "python" / name / "1").mkdir(parents=True)
        np.save(work / "python" / name / "1" / "weights.npy", np.ones(mib * MiB // 8))
        out["python"][name] = work / "python" / name
    return out


def upload(client, kind: str, models: dict[str, Path]) -> None:
    for name, folder in models.items():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), BUCKET, f"{kind}/{name}/{path.relative_to(folder)}")


def keys(client, prefix: str) -> list[tuple[str, int]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [(o["Key"], o["Size"]) for page in pages for o in page.get("Contents", [])]


def one_stream(client, files: list[tuple[str, int]]) -> float:
    started = time.perf_counter()
    for key, _ in files:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        for _ in body.iter_chunks(MiB):
            pass
    return time.perf_counter() - started


def ranged(client, files: list[tuple[str, int]]) -> float:
    parts = [(key, start, min(start + PART, size) - 1) for key, size in files for start in range(0, max(size, 1), PART)]

    def get(part: tuple[str, int, int]) -> None:
        key, a, b = part
        body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={a}-{b}")["Body"]
        for _ in body.iter_chunks(MiB):
            pass

    started = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(get, parts))
    return time.perf_counter() - started


def cat(folder: Path) -> float:
    files = [str(p) for p in folder.rglob("*") if p.is_file()]
    started = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def open_floor(kind: str, folder: Path, prepacking: bool) -> float:
    """Creating the model from the installed copy in this process: the framework's own floor."""
    started = time.perf_counter()
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.disable_prepacking", "0" if prepacking else "1")
        ort.InferenceSession(str(next(folder.glob("*.onnx"))), options, providers=["CPUExecutionProvider"])
    elif kind == "tensorflow":
        import tensorflow as tf

        tf.saved_model.load(str(folder))
    else:
        np.load(folder / "weights.npy", mmap_mode="r")
    return time.perf_counter() - started


class Replica:
    def __init__(self, work: Path, s3: SeaweedS3, kind: str, tag: str, config: dict | None = None):
        folder = work / f"replica-{tag}"
        spec = write_api(folder, PREDICTORS[kind], type=kind, name=tag, config=config,
                         models={"dir": f"s3://{BUCKET}/{kind}/", "cache_size": 2, "disk_cache_size": 3},
                         threads_per_process=4)
        self.kind, self.tag, self.state = kind, tag, folder / "state"
        self.proc = ReplicaProcess(spec, self.state, env=s3.env)
        self.session = requests.Session()

    def ask(self, name: str) -> float:
        started = time.perf_counter()
        resp = self.session.post(self.proc.base + "/", params={"model": name}, json={}, timeout=300)
        elapsed = time.perf_counter() - started
        if resp.status_code != 200:
            raise RuntimeError(f"{name}: HTTP {resp.status_code} {resp.text[:300]}")
        return elapsed

    def installed(self, name: str) -> Path:
        return self.state / "models" / name / "1"


def hammer(r: Replica, stop: threading.Event, out: list[float]) -> None:
    with requests.Session() as s:
        while not stop.is_set():
            started = time.perf_counter()
            s.post(r.proc.base + "/", params={"model": "hot"}, json={}, timeout=60)
            out.append(time.perf_counter() - started)


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def measure(r: Replica, s3_client, name: str, prepacking: bool, results: dict, with_hot: bool) -> None:
    row = results.setdefault((r.tag, name), {})
    for filler in ("f1", "f2", "f3"):  # out of memory and off disk (3 versions on disk)
        r.ask(filler)
    companion = "hot" if with_hot else "f3"  # in memory for the miss, beside it
    r.ask(companion)
    files = keys(s3_client, f"{r.kind}/{name}/")
    row.setdefault("one GET stream", []).append(one_stream(s3_client, files))
    row.setdefault("ranged GETs", []).append(ranged(s3_client, files))
    stop, during = threading.Event(), []
    hot = threading.Thread(target=hammer, args=(r, stop, during)) if with_hot else None
    if hot:
        hot.start()
    try:
        row.setdefault("full miss", []).append(r.ask(name))
    finally:
        stop.set()
        if hot:
            hot.join()
    row.setdefault("memory hit", []).append(min(r.ask(name) for _ in range(3)))
    r.ask(companion)
    r.ask("f2")  # takes the model's memory slot (the companion is more recent); it stays on disk
    row.setdefault("disk hit", []).append(r.ask(name))
    installed = r.installed(name)
    row.setdefault("cat", []).append(cat(installed))
    row.setdefault("open", []).append(open_floor(r.kind, installed, prepacking))
    if with_hot:
        idle: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=hammer, args=(r, stop, idle))
        t.start()
        time.sleep(max(1.0, row["full miss"][-1]))  # the same length of load as during the miss
        stop.set()
        t.join()
        row.setdefault("hot p99 during the miss", []).append(p99(during))
        row.setdefault("hot p99 idle", []).append(p99(idle))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        work = Path(tmp)
        models = build(work / "models")
        s3 = SeaweedS3(work / "s3", buckets=[BUCKET])
        s3.start()
        replicas: list[Replica] = []
        try:
            s3.wait_ready(timeout=60)
            client = s3.client()
            for kind, ms in models.items():
                upload(client, kind, ms)
            shutil.rmtree(work / "models")
            replicas = [Replica(work, s3, "onnx", "onnx"),
                        Replica(work, s3, "onnx", "onnx-noprepack",
                                {"onnx_session_config": {"session.disable_prepacking": "1"}}),
                        Replica(work, s3, "tensorflow", "tensorflow"), Replica(work, s3, "python", "numpy")]
            for r in replicas:
                r.proc.start()
            for r in replicas:
                r.proc.wait_ready(timeout=120)
            plan = [(replicas[0], "onnx50", True, False), (replicas[0], "onnx300", True, False),
                    (replicas[0], "onnx1024", True, True), (replicas[1], "onnx1024", False, True),
                    (replicas[2], "tf300", True, False), (replicas[3], "np300", True, False)]
            for rnd in range(args.rounds):
                for r, name, prepacking, with_hot in plan:
                    measure(r, client, name, prepacking, results, with_hot)
                    print(f"round {rnd + 1}: {r.tag} {name} done", flush=True)
        finally:
            for r in replicas:
                r.proc.stop()
            s3.stop()
    report(results)
    return 0


def _fmt(values: list[float], unit: str = "s") -> str:
    med, worst = statistics.median(values), max(values)
    if unit == "ms":
        return f"{med * 1000:.0f} ms ({worst * 1000:.0f})"
    return f"{med:.2f} s ({worst:.2f})"


def report(results: dict) -> None:
    cols = ["full miss", "disk hit", "memory hit", "one GET stream", "ranged GETs", "cat", "open"]
    print("| replica | model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for (tag, name), row in results.items():
        cells = [_fmt(row[c], "ms" if c == "memory hit" else "s") for c in cols]
        print(f"| {tag} | {name} | " + " | ".join(cells) + " |")
    print()
    for (tag, name), row in results.items():
        if "hot p99 during the miss" not in row:
            continue
        floor = min(statistics.median(row["one GET stream"]), statistics.median(row["ranged GETs"]))
        miss, disk = statistics.median(row["full miss"]), statistics.median(row["disk hit"])
        during, idle = statistics.median(row["hot p99 during the miss"]), statistics.median(row["hot p99 idle"])
        print(f"- {tag} {name}: full miss {miss:.2f} s against 1.3 x {floor:.2f} s + 0.2 s = {1.3 * floor + 0.2:.2f} s: "
              f"{'met' if miss <= 1.3 * floor + 0.2 else 'missed'}; disk hit {disk:.2f} s against 0.3 s: "
              f"{'met' if disk <= 0.3 else 'missed'}; hot p99 {during * 1000:.1f} ms during the miss against "
              f"{idle * 1000:.1f} ms idle (x{during / idle:.1f}): {'met' if during <= 2 * idle else 'missed'}")


if __name__ == "__main__":
    raise SystemExit(main())
