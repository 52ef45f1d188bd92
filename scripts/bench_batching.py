#!/usr/bin/env python
"""Server-side batching benchmark: throughput and latency of an MLP with and without `server_side_batching`,
against MLServer's adaptive batching, written as section 6 of docs/benchmarks.md (`make bench` runs it).

The benchmark builds an MLP (128 inputs, three 1024-wide ReLU layers, 10 outputs; the same weights as ONNX and
as a TensorFlow SavedModel) and serves it from:

- the replica, ONNX and TensorFlow predictors, each with and without batching (one worker process,
  `threads_per_process` = `max_batch_size`, so a batch can fill);
- MLServer (its own virtualenv, as in figure 1) with adaptive batching at the same `max_batch_size` and
  `max_batch_time`, on the same ONNX file (`scripts/mlserver_runtime/runtime.py`, ONNXTensorRuntime).

wrk drives 1, 8 and 32 keep-alive connections (closed loop: each sends its next request when answered) in
interleaved rounds (round -> client count -> target), so each target meets the same machine state.

    .venv/bin/python scripts/bench_batching.py                 # writes docs/benchmarks.md section 6
    .venv/bin/python scripts/bench_batching.py --no-doc        # prints it
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import model_factory as mf  # noqa: E402
from scripts.bench_lib import figures, load, servers  # noqa: E402
from tests.replica_proc import free_port  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "bench" / "batching.json"
HEADING = "## 6. Server-side batching"
N_IN, HIDDEN, LAYERS, N_OUT = 128, 1024, 3, 10

ONNX_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        (y,) = self.client.predict(payload)
        return {"y": y}
"""

TF_PREDICTOR = """
import numpy as np


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload):
        return {"y": np.asarray(self.client.predict(payload)["y"]).reshape(-1, 10)}
"""

TF_BUILD = """
import sys
import numpy as np
import tensorflow as tf
params = np.load(sys.argv[1])
n = len(params.files) // 2


class MLP(tf.Module):
    def __init__(self):
        super().__init__()
        self.ws = [tf.Variable(params[f"W{i}"]) for i in range(n)]
        self.bs = [tf.Variable(params[f"b{i}"]) for i in range(n)]

    @tf.function(input_signature=[tf.TensorSpec([None, params["W0"].shape[0]], tf.float32, name="x")])
    def serve(self, x):
        for i in range(n):
            x = tf.matmul(x, self.ws[i]) + self.bs[i]
            if i < n - 1:
                x = tf.nn.relu(x)
        return {"y": x}


m = MLP()
tf.saved_model.save(m, sys.argv[2], signatures={"serving_default": m.serve})
"""


# -- the model -----------------------------------------------------------------------------------------------------
def mlp_params(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    dims = [N_IN] + [HIDDEN] * LAYERS + [N_OUT]
    return [((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), (rng.standard_normal(b) * 0.1).astype(np.float32))
            for a, b in zip(dims, dims[1:])]


def forward(params: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1:
            x = np.maximum(x, 0)
    return x


def write_onnx(path: Path, params: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "input"
    for i, (w, b) in enumerate(params):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(params) - 1
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N_OUT])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", mf.ONNX_OPSET)])
    model.ir_version = mf.ONNX_IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def write_tf(directory: Path, params: list[tuple[np.ndarray, np.ndarray]], work: Path) -> Path:
    """In a subprocess: TensorFlow stays out of the benchmark's own process."""
    npz = work / "mlp.npz"
    np.savez(npz, **{f"W{i}": w for i, (w, _) in enumerate(params)}, **{f"b{i}": b for i, (_, b) in enumerate(params)})
    subprocess.run([sys.executable, "-c", TF_BUILD, str(npz), str(directory)], check=True, capture_output=True)
    return directory


# -- the servers -----------------------------------------------------------------------------------------------------
class BatchingMLServer(servers.MLServer):
    """MLServer with adaptive batching on the MLP (model "mlp", ONNXTensorRuntime)."""

    ready_path = "/v2/models/mlp/ready"

    def __init__(self, py: Path, model_file: Path, work: Path, max_batch_size: int, max_batch_time: float):
        super().__init__(py, model_file, 1, work)
        self.name, self.folder = "mlserver-batching", work / "mlserver-batching"
        self.log_path = work / "mlserver-batching.log"
        self.max_batch_size, self.max_batch_time = max_batch_size, max_batch_time

    def start(self) -> "BatchingMLServer":
        model_dir = self.folder / "mlp"
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "scripts" / "mlserver_runtime" / "runtime.py", self.folder / "runtime.py")
        (self.folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(),
            "parallel_workers": 1, "debug": False}))
        (model_dir / "model-settings.json").write_text(json.dumps({
            "name": "mlp", "implementation": "runtime.ONNXTensorRuntime", "parameters": {"uri": str(self.model_file)},
            "max_batch_size": self.max_batch_size, "max_batch_time": self.max_batch_time}))
        self._popen([str(self.py.parent / "mlserver"), "start", str(self.folder)], cwd=self.folder,
                    env={"PYTHONPATH": str(self.folder)})
        return self


def replica_answer(resp: requests.Response) -> np.ndarray:
    return np.asarray(resp.json()["y"], dtype=np.float32).reshape(-1, N_OUT)


def mlserver_answer(resp: requests.Response) -> np.ndarray:
    return np.asarray(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(-1, N_OUT)


def batch_figures(base: str) -> dict[str, float]:
    """Running totals from a replica's /metrics: batches, requests in them, seconds requests waited in the queue."""
    text = requests.get(base + "/metrics", timeout=10).text

    def total(name: str) -> float:
        return sum(float(m) for m in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))

    return {"batches": total("replica_batch_size_count"), "requests": total("replica_batch_size_sum"),
            "wait_s": total("replica_batch_wait_seconds_sum")}


MODEL_TIMING = """
import sys, time
import numpy as np
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
for b in map(int, sys.argv[2:]):
    x = np.random.default_rng(0).standard_normal((b, s.get_inputs()[0].shape[1])).astype(np.float32)
    for _ in range(20):
        s.run(None, {"input": x})
    runs, t, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t < 1.0:
        s.run(None, {"input": x})
        runs += 1
    print(b, (time.process_time() - cpu) / runs * 1e6)
"""


def model_us_per_row(model_file: Path, sizes: list[int]) -> dict[int, float]:
    """onnxruntime alone, in its own process on the same machine: CPU microseconds (every thread of the process,
    as the worker's figure counts them) per row at each batch size."""
    out = subprocess.run([sys.executable, "-c", MODEL_TIMING, str(model_file), *map(str, sizes)], check=True,
                         capture_output=True, text=True)
    return {int(b): float(us) / int(b) for b, us in (ln.split() for ln in out.stdout.strip().splitlines())}


# -- the run -----------------------------------------------------------------------------------------------------------
def run(work: Path, *, n_rounds: int, duration: float, clients: tuple[int, ...], max_batch_size: int,
        interval: float, mlserver: bool = True) -> dict:
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    loadavg_start = list(os.getloadavg())
    params = mlp_params()
    onnx_dir, tf_dir = work / "models" / "mlp-onnx", work / "models" / "mlp-tf"
    write_onnx(onnx_dir / "1" / "model.onnx", params)
    write_tf(tf_dir / "1", params, work)
    x = np.random.default_rng(1).uniform(-1, 1, (1, N_IN)).round(4).astype(np.float32)
    want = forward(params, x.astype(np.float64))
    batching = {"max_batch_size": max_batch_size, "batch_interval": f"{interval * 1000:g}ms"}
    common = {"processes_per_replica": 1, "threads_per_process": max_batch_size}
    specs = {
        "onnx unbatched": dict(type="onnx", predictor=ONNX_PREDICTOR, model_path=str(onnx_dir), **common),
        "onnx batched": dict(type="onnx", predictor=ONNX_PREDICTOR, model_path=str(onnx_dir), **common,
                             server_side_batching=batching),
        "tf unbatched": dict(type="tensorflow", predictor=TF_PREDICTOR, model_path=str(tf_dir), **common),
        "tf batched": dict(type="tensorflow", predictor=TF_PREDICTOR, model_path=str(tf_dir), **common,
                           server_side_batching=batching),
    }
    running: list = []
    targets: dict[str, tuple[str, str, list[str]]] = {}
    answers = {}
    notes: dict[str, str] = {}
    replica_body = json.dumps({"input": x.tolist()})
    try:
        for name, api in specs.items():
            r = figures.replica(work, name.replace(" ", "-"), **api)
            running.append(r)
            r.start()
            body = replica_body if api["type"] == "onnx" else json.dumps({"x": x.tolist()})
            targets[name] = (r.base, body, ["/"])
            answers[name] = replica_answer
        if mlserver:
            py, why = servers.ensure_mlserver_venv(work / "mlserver-install.log")
            if py is None:
                notes["mlserver"] = why
            else:
                m = BatchingMLServer(py, onnx_dir / "1" / "model.onnx", work, max_batch_size, interval).start()
                running.append(m)
                notes["mlserver_version"] = servers.mlserver_version(py)
                v2 = json.dumps({"inputs": [{"name": "input", "shape": [1, N_IN], "datatype": "FP32",
                                             "data": x.ravel().tolist()}]})
                targets["mlserver batched"] = (m.base, v2, ["/v2/models/mlp/infer"])
                answers["mlserver batched"] = mlserver_answer
        for s in running:
            s.wait_ready(timeout=180)
        for name, (base, body, paths) in targets.items():  # every server answers the right numbers
            resp = requests.post(base + paths[0], data=body, headers={"Content-Type": "application/json"}, timeout=30)
            resp.raise_for_status()
            np.testing.assert_allclose(answers[name](resp), want, rtol=1e-3, atol=1e-3, err_msg=name)
            load.run(base, body, paths, duration=1, connections=max(clients))  # warm-up
        per_round: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in clients} for n in targets}
        workers = {name: r.worker_pids() for name, r in zip(specs, running)}
        for i in range(n_rounds):
            for c in clients:
                for name, (base, body, paths) in targets.items():
                    before = batch_figures(base) if name in workers else None
                    cpu = sum(figures.worker_cpu_s(workers[name])) if name in workers else None
                    res = load.run(base, body, paths, duration=duration, connections=c).as_dict()
                    if name in workers:
                        res["cpu_us_per_request"] = (sum(figures.worker_cpu_s(workers[name])) - cpu) / max(res["requests"], 1) * 1e6
                        after = batch_figures(base)
                        n = after["batches"] - before["batches"]
                        if n:
                            queued = after["requests"] - before["requests"]
                            res["mean_batch"] = queued / n
                            res["mean_wait_ms"] = (after["wait_s"] - before["wait_s"]) / queued * 1000
                    per_round[name][c].append(res)
                    print(f"  round {i + 1}/{n_rounds} {c:>2} clients {name:<17} {res['rps']:8.0f} req/s  "
                          f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  failed {res['failed']}", flush=True)
    finally:
        for s in running:
            s.stop()
    top = [r.get("mean_batch", 1) for r in per_round["onnx batched"][max(clients)]]
    batch = max(1, round(statistics.median(top)))
    return {"started": started, "rounds": n_rounds, "loadavg_start": loadavg_start, "loadavg_end": list(os.getloadavg()),
            "model_us_per_row": model_us_per_row(onnx_dir / "1" / "model.onnx", sorted({1, batch, max_batch_size})), "duration": duration, "clients": list(clients), "max_batch_size": max_batch_size,
            "interval_ms": interval * 1000, "tool": load.generator(), "per_round": per_round, "notes": notes, "model": f"MLP {N_IN} -> {LAYERS} x {HIDDEN} (ReLU) -> {N_OUT}, float32"}


# -- the figures -------------------------------------------------------------------------------------------------------
def _rounds(data: dict, name: str, c: int) -> list[dict]:
    return data["per_round"].get(name, {}).get(str(c), data["per_round"].get(name, {}).get(c, []))


def ratio(data: dict, a: str, b: str, c: int, key: str = "rps") -> float | None:
    """Median over rounds of a[key] / b[key], both measured in the same round."""
    ra, rb = _rounds(data, a, c), _rounds(data, b, c)
    if not ra or not rb:
        return None
    return statistics.median(x[key] / y[key] for x, y in zip(ra, rb))


def diff(data: dict, a: str, b: str, c: int, key: str = "p50_ms") -> float | None:
    ra, rb = _rounds(data, a, c), _rounds(data, b, c)
    if not ra or not rb:
        return None
    return statistics.median(x[key] - y[key] for x, y in zip(ra, rb))


def targets(data: dict) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    top, low = max(data["clients"]), min(data["clients"])
    for kind in ("onnx", "tf"):
        x = ratio(data, f"{kind} batched", f"{kind} unbatched", top)
        rows.append((f"{kind}, {top} clients: batched >= 1.5x unbatched throughput", f"{x:.2f}x", x >= 1.5))
        d = diff(data, f"{kind} batched", f"{kind} unbatched", low)
        rows.append((f"{kind}, {low} client: batched p50 at most batch_interval ({data['interval_ms']:g} ms) above "
                     "unbatched", f"{d:+.2f} ms", d <= data["interval_ms"]))
    y = ratio(data, "onnx batched", "mlserver batched", top)
    rows.append((f"onnx, {top} clients: batched replica ahead of MLServer's adaptive batching",
                 "not measured: " + data["notes"].get("mlserver", "") if y is None else f"{y:.2f}x", None if y is None else y > 1))
    return rows


def _median(rs: list[dict], key: str) -> float | None:
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def section(data: dict) -> str:
    rows = []
    for name in data["per_round"]:
        for c in data["clients"]:
            rs = _rounds(data, name, c)
            if not rs:
                continue
            rows.append([name, str(c), f"{_median(rs, 'rps'):,.0f}", f"{min(r['rps'] for r in rs):,.0f}",
                         f"{_median(rs, 'p50_ms'):.2f}", f"{_median(rs, 'p99_ms'):.2f}",
                         f"{max(r['p99_ms'] for r in rs):.2f}", _fmt(_median(rs, "mean_batch"), ".1f"),
                         _fmt(_median(rs, "mean_wait_ms"), ".2f"), _fmt(_median(rs, "cpu_us_per_request"), ",.0f"),
                         str(sum(r["failed"] for r in rs))])
    table = "\n".join(["| target | clients | req/s (median) | req/s (worst) | p50 ms | p99 ms (median) | p99 ms (worst) "
                       "| mean batch | queue wait ms | worker CPU µs / request | failed |", "|" + "---|" * 11]
                      + ["| " + " | ".join(r) + " |" for r in rows])
    trows = "\n".join(f"| {t} | {m} | {'n/a' if ok is None else ('met' if ok else '**missed**')} |"
                      for t, m, ok in targets(data))
    mls = data["notes"].get("mlserver_version", "not run")
    return f"""{HEADING}

Generated by `scripts/bench_batching.py` (part of `make bench`), run {data.get('started', '?')}; load average
(1 min) {data['loadavg_start'][0]:.1f} at the start and {data['loadavg_end'][0]:.1f} at the end on {os.cpu_count()} CPUs. The model: {data['model']}
(about {(N_IN * HIDDEN + (LAYERS - 1) * HIDDEN * HIDDEN + HIDDEN * N_OUT) * 4 / 2**20:.0f} MiB of weights), built by the benchmark as ONNX and as a TensorFlow SavedModel
with the same weights; one request is one row (a JSON body of {N_IN} floats), and every server's answer is checked
against numpy before the runs. Every server runs one worker process: the replica with `threads_per_process:
{data['max_batch_size']}`, with and without `server_side_batching: {{max_batch_size: {data['max_batch_size']}, batch_interval: {data['interval_ms']:g}ms}}`;
MLServer {mls} with adaptive batching at `max_batch_size: {data['max_batch_size']}`, `max_batch_time: {data['interval_ms'] / 1000:g}` on the same ONNX
file (`scripts/mlserver_runtime/runtime.py`, ONNXTensorRuntime). `{data['tool']}` keeps 1, 8 or 32 keep-alive connections
busy (closed loop: a client sends its next request when answered); {data['rounds']} interleaved rounds (round, then client
count, then target) of {data['duration']:g} s; medians over rounds, the worst round beside them. *Mean batch* and *queue
wait* come from the replica's `/metrics` over each run; *worker CPU* is the worker process's CPU time (all its
threads) per answered request.

| target | measured | |
|---|---|---|
{trows}

{table}
""" + findings(data)


def findings(data: dict) -> str:
    """Where the time goes, from the figures of this run."""
    top, low = max(data["clients"]), min(data["clients"])
    per_row = {int(k): v for k, v in data["model_us_per_row"].items()}
    one = per_row[1]
    lines = []
    for kind, label in (("onnx", "ONNX"), ("tf", "TensorFlow")):
        unb, bat = _rounds(data, f"{kind} unbatched", top), _rounds(data, f"{kind} batched", top)
        cpu_u, cpu_b = _median(unb, "cpu_us_per_request"), _median(bat, "cpu_us_per_request")
        mb = _median(bat, "mean_batch")
        if cpu_u and cpu_b and mb:
            lines.append(f"{label}, {top} clients: the worker spends {cpu_u:,.0f} µs of CPU per request unbatched and "
                         f"{cpu_b:,.0f} µs batched (mean batch {mb:.1f}).")
    near = min(per_row, key=lambda b: abs(b - (_median(_rounds(data, "onnx batched", top), "mean_batch") or 1)))
    cpu_u = _median(_rounds(data, "onnx unbatched", top), "cpu_us_per_request")
    if cpu_u:
        model = (f"The model alone (onnxruntime in its own process on the same machine, CPU of all its threads): "
                 f"{one:,.0f} µs for one row, "
                 + ", ".join(f"{us:,.0f} µs per row in a batch of {b}" for b, us in sorted(per_row.items()) if b > 1)
                 + ".")
        fixed = cpu_u - one
        if fixed > 0:
            model += (f" What batching cannot shrink (HTTP, parsing {N_IN} floats of JSON, Flask, the replica's request "
                      f"handling, the answer) is then about {fixed:,.0f} µs of the {cpu_u:,.0f} µs an unbatched ONNX "
                      f"request costs at {top} clients, so on CPU-bound cores batches of {near} can at best give "
                      f"{cpu_u / (fixed + per_row[near]):.2f}x the unbatched throughput, and a free model "
                      f"{cpu_u / fixed:.2f}x.")
            cpu_b = _median(_rounds(data, "onnx batched", top), "cpu_us_per_request")
            if cpu_b and cpu_b > fixed + per_row[near]:
                model += (f" The batched worker spent {cpu_b:,.0f} µs per request instead of the {fixed + per_row[near]:,.0f} "
                          f"µs that sum predicts: the other {cpu_b - fixed - per_row[near]:,.0f} µs are what batching adds "
                          f"on these cores (each request's thread sleeps and is woken per batch and takes the GIL back, "
                          "the rows are concatenated and split, and the intra-op threads spin while a batch waits "
                          "out its interval); this run does not split them further.")
        else:
            model += (f" That is more than the {cpu_u:,.0f} µs a whole unbatched ONNX request cost the worker at {top} "
                      "clients: concurrent unbatched runs already share onnxruntime's threads, and a lone run on a "
                      "busy machine pays for spinning threads that wait for cores.")
        lines.append(model)
    for kind, label in (("onnx", "ONNX"), ("tf", "TensorFlow")):
        d = diff(data, f"{kind} batched", f"{kind} unbatched", low)
        bat, unb = _rounds(data, f"{kind} batched", low), _rounds(data, f"{kind} unbatched", low)
        wait = _median(bat, "mean_wait_ms")
        cpu_b, cpu_u = _median(bat, "cpu_us_per_request"), _median(unb, "cpu_us_per_request")
        if d is None or wait is None:
            continue
        line = (f"{label}, {low} client: p50 moved by {d:+.2f} ms for an interval of {data['interval_ms']:g} ms. A lone "
                f"request waited {wait:.2f} ms in the queue on average: the leader sleeps until the interval ends, "
                f"and the {wait - data['interval_ms']:.2f} ms beyond it are the woken thread waiting for a core.")
        if cpu_b and cpu_u:
            line += (f" The rest is the run itself, slower after a pause: the worker spent {cpu_b:,.0f} µs of CPU per "
                     f"request batched against {cpu_u:,.0f} µs unbatched, because the framework's intra-op threads "
                     "spin for a while after every run (burning a core while the next request waits out the "
                     "interval, on cores the woken leader needs) and are parked by the time the next run starts; "
                     "back-to-back unbatched runs find them spinning.")
        lines.append(line)
    return "\nWhere the time goes:\n\n" + "\n".join(f"- {ln}" for ln in lines) + "\n" if lines else ""


def write_doc(data: dict) -> None:
    """Replace (or append) section 6 of docs/benchmarks.md, leaving the other sections as they are."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = text.find(HEADING)
    if start >= 0:
        nxt = text.find("\n## ", start + len(HEADING))
        text = text[:start] + (text[nxt + 1:] if nxt >= 0 else "")
    DOC.write_text(text.rstrip() + "\n\n" + section(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per target, client count and round")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--no-doc", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from docs/bench/batching.json")
    args = parser.parse_args()
    if args.report_only:
        write_doc(json.loads(RESULTS.read_text()))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    started = time.time()
    try:
        data = run(work, n_rounds=args.rounds, duration=args.duration, clients=tuple(args.clients),
                   max_batch_size=args.max_batch_size, interval=args.interval_ms / 1000, mlserver=not args.no_mlserver)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.no_doc:
        print(section(data))
    else:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=1))
        write_doc(data)
        print(f"written {DOC.relative_to(ROOT)} section 6 in {time.time() - started:.0f}s")
    for t, m, ok in targets(data):
        print(f"{'MET   ' if ok else ('n/a   ' if ok is None else 'MISSED')} {t}: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
