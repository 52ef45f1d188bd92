"""The V2 figure of docs/benchmarks.md: the replica's Open Inference Protocol (KServe V2) infer route, as JSON
and with the binary tensor extension, beside its own Cortex route (POST / with JSON) and beside MLServer and
Triton answering the same V2 request, in the same interleaved rounds.

Every server runs the iris ONNX model with `stacks.WORKERS` processes (or model instances) and answers the
request with the session's own outputs (FP32 scores [1, 3], INT64 label [1]); the Cortex route runs the
examples' predictor, which answers the label. Every answer is checked against onnxruntime run here before the
rounds. `v2_report` turns the result into the section and its targets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests

from scripts.bench_lib import figures, load, models, servers, stacks, v2

N = stacks.WORKERS
MODEL = "iris"
INFER = f"/v2/models/{MODEL}/infer"
INPUTS = {"input": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}  # examples/onnx/sample.json as a tensor
JSON_BODY = json.dumps(v2.json_request(INPUTS))
# Binary both ways: the inputs' bytes after the JSON header, every output asked for as bytes (what Triton's own
# clients send by default).
BINARY_BODY, BINARY_HEADERS = v2.binary_request(INPUTS, binary_outputs=True)

REPLICA_BINARY, REPLICA_JSON, CORTEX = "replica, V2 binary", "replica, V2 JSON", "replica, Cortex JSON (POST /)"
MLSERVER_JSON = "MLServer, V2 JSON"
TRITON_JSON, TRITON_BINARY = "Triton, V2 JSON", "Triton, V2 binary"


# A peer's start can lose a race with itself on a busy machine (PyTriton's second model instance connects to
# the first one's handshake socket before it listens: ConnectionRefusedError), so a failed start gets a second try.
ATTEMPTS = 2


def measure(work: Path, *, n_rounds: int, duration: float, mlserver: bool = True, triton: bool = True) -> dict:
    """Per target the summary of its rounds (figures.summarize, with CPU per request of its whole process
    tree); a peer that cannot install or start is left out with the reason in `notes`."""
    work = work / "v2"
    model_dir = work / "models" / MODEL
    model_file = models.iris_onnx(model_dir / "1" / "model.onnx")
    notes: dict[str, str] = {}
    running: list = []
    targets: dict[str, tuple[str, str | bytes, list[str], dict | None]] = {}
    roots: dict[str, int] = {}
    try:
        r = figures.replica(work, MODEL, model_path=str(model_dir), processes_per_replica=N,
                            threads_per_process=1).start()
        running.append(r)
        peers: list[tuple[str, Callable[[Path], servers.Server], dict]] = []  # (peer, its server in a folder, requests)
        if mlserver:
            py, why = servers.ensure_mlserver_venv(work / "mlserver-install.log")
            if py is None:
                notes["mlserver"] = why
            else:
                notes["mlserver_version"] = servers.mlserver_version(py)
                peers.append(("mlserver", partial(servers.MLServer, py, model_file, N, model=MODEL,
                                                  implementation="runtime.ONNXTensorRuntime"),
                              {MLSERVER_JSON: (JSON_BODY, None)}))
        if triton:
            stack = stacks.STACKS["triton"]
            py, why = servers.ensure_venv(stack.name, list(stack.pins), work / "triton-install.log")
            if py is None:
                notes["triton"] = why
            else:
                notes["triton_version"] = stack.version
                peers.append(("triton", partial(stacks.TritonTensors, stack, py, model_file),
                              {TRITON_JSON: (JSON_BODY, None), TRITON_BINARY: (BINARY_BODY, BINARY_HEADERS)}))
        for peer, make, wanted in peers:
            server = _ready(peer, make, work, running, notes)
            if server is None:
                continue
            for name, (body, headers) in wanted.items():
                targets[name] = (server.base, body, [INFER], headers)
                roots[name] = server.proc.pid
        r.wait_ready(timeout=180)
        mine = {REPLICA_BINARY: (r.base, BINARY_BODY, [INFER], BINARY_HEADERS),
                REPLICA_JSON: (r.base, JSON_BODY, [INFER], None), CORTEX: (r.base, models.SAMPLE, ["/"], None)}
        targets = {**mine, **targets}
        roots.update({name: r.proc.pid for name in mine})
        check_answers(targets, model_file)
        print(f"v2: {', '.join(targets)}; {n_rounds} rounds of {duration:g}s each, {figures.CONNECTIONS} "
              "connections", flush=True)
        raw = figures.rounds(targets, rounds=n_rounds, duration=duration, roots=roots)
        return {"results": {name: figures.summarize(v) for name, v in raw.items()}, "notes": notes,
                "processes": N, "rounds": n_rounds, "duration": duration, "connections": figures.CONNECTIONS,
                "tool": load.generator(), "json_bytes": len(JSON_BODY.encode()), "binary_bytes": len(BINARY_BODY)}
    finally:
        for s in running:
            s.stop()


def _ready(peer: str, make: Callable[[Path], servers.Server], work: Path, running: list,
           notes: dict[str, str]) -> servers.Server | None:
    """The peer, started and ready (a second try, in a fresh folder, after a failed start), or None with the
    reason in `notes`."""
    why = ""
    for attempt in range(1, ATTEMPTS + 1):
        folder = work / f"{peer}-{attempt}"
        folder.mkdir(parents=True)
        server = make(folder).start()
        running.append(server)
        try:
            return server.wait_ready(timeout=180)
        except (RuntimeError, TimeoutError) as e:
            server.stop()
            why = str(e)[-600:]
    notes[peer] = f"did not start in {ATTEMPTS} tries: {why}"
    return None


def check_answers(targets: dict[str, tuple[str, str | bytes, list[str], dict | None]], model_file: Path) -> None:
    """One request per target: every V2 answer must hold onnxruntime's outputs (name, datatype, shape, values),
    the Cortex route the label."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, INPUTS)))
    for name, (base, body, paths, headers) in targets.items():
        resp = requests.post(base + paths[0], data=body, headers=headers or {"Content-Type": "application/json"},
                             timeout=30)
        if resp.status_code != 200:
            raise RuntimeError(f"{name} answered {resp.status_code}: {resp.text[:300]}")
        if name == CORTEX:
            if resp.text != "setosa":
                raise RuntimeError(f"{name} answered {resp.text[:300]!r}, not setosa")
            continue
        got = {o.name: o for o in v2.answer(resp.content, dict(resp.headers))}
        for out, value in want.items():
            o = got.get(out)
            if (o is None or (o.datatype, o.shape) != (v2.datatype(value), list(value.shape))
                    or not np.allclose(o.data, value, rtol=1e-6)):
                raise RuntimeError(f"{name}: output {out!r} is {o}, not {v2.datatype(value)} {value.tolist()}")
