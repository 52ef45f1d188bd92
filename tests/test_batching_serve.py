"""Server-side batching against a real replica, for each predictor type (ONNX, TensorFlow, Python).

One replica per type (one worker, `threads_per_process: 8`, `max_batch_size: 8`), serving the iris linear
model from a local directory; tests run in file order on it, the live reload last. Every client sends rows of
its own and checks that the answer is exactly its rows through one version of the model (scores = x @ W + b).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.model_factory import IRIS_BIAS, IRIS_WEIGHTS, write_onnx_linear, write_python_linear, write_tf_linear
from tests.helpers import serving, write_api

INTERVAL = 0.25  # batch_interval, seconds
BATCH = 8
W = np.asarray(IRIS_WEIGHTS)
BIAS = {1: np.asarray(IRIS_BIAS), 2: np.asarray(IRIS_BIAS) + 100.0}  # version 2 is told apart by its scores
KEY = {"onnx": "input", "tensorflow": "x", "python": "x"}  # the model's input name, which the body is keyed by

PREDICTORS = {
    "onnx": """
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client

            def predict(self, payload):
                scores, label = self.client.predict(payload)
                return {"scores": scores, "label": label}
    """,
    "tensorflow": """
        import numpy as np

        class TensorFlowPredictor:
            def __init__(self, tensorflow_client, config):
                self.client = tensorflow_client

            def predict(self, payload):
                out = self.client.predict(payload)
                # Cortex's flat lists: int64 labels as decimal strings
                return {"scores": np.asarray(out["scores"]).reshape(-1, 3), "label": [int(v) for v in out["label"]]}
    """,
    # Cortex v0.25: with server_side_batching, predict gets lists and returns a list in the same order.
    "python": """
        import json
        import os

        import numpy as np

        from workers.errors import BadRequest


        class PythonPredictor:
            def __init__(self, config, python_client):
                self.client = python_client

            def load_model(self, model_path):
                with open(os.path.join(model_path, "model.json")) as f:
                    m = json.load(f)
                return np.asarray(m["weights"], dtype=np.float32), np.asarray(m["bias"], dtype=np.float32)

            def predict(self, payload, query_params):
                assert isinstance(payload, list) and isinstance(query_params, list) and len(payload) == len(query_params)
                if any(q.get("short") for q in query_params):
                    return payload[1:]  # one answer short: the replica must refuse the batch
                w, b = self.client.get_model()
                out = []
                for p in payload:
                    try:
                        x = np.asarray(p["x"], dtype=np.float32)
                    except (KeyError, TypeError, ValueError) as e:
                        raise BadRequest(f"bad input: {e!r}")
                    if x.ndim != 2 or x.shape[1] != 4:
                        raise BadRequest(f"x must be [rows, 4], got {list(x.shape)}")
                    scores = x @ w + b
                    out.append({"scores": scores, "label": scores.argmax(axis=1)})
                return out
    """,
}


def write_version(ptype: str, root, version: int) -> None:
    """Version `version` of the model "iris" in `root`, written aside and renamed into place (a careful publisher)."""
    tmp = root / f".v{version}"
    if ptype == "onnx":
        write_onnx_linear(tmp / "model.onnx", IRIS_WEIGHTS, BIAS[version].tolist())
    elif ptype == "tensorflow":
        write_tf_linear(tmp, IRIS_WEIGHTS, BIAS[version].tolist(), extra_signature=False)
    else:
        write_python_linear(tmp, IRIS_WEIGHTS, BIAS[version].tolist())
    tmp.rename(root / str(version))


@pytest.fixture(scope="module", params=["onnx", "python", pytest.param("tensorflow", marks=pytest.mark.tensorflow)])
def served(request, tmp_path_factory):
    ptype = request.param
    folder = tmp_path_factory.mktemp(f"batching-{ptype}")
    (folder / "models" / "iris").mkdir(parents=True)
    write_version(ptype, folder / "models" / "iris", 1)
    spec = write_api(folder, PREDICTORS[ptype], type=ptype, model_path="models/iris", threads_per_process=BATCH,
                     server_side_batching={"max_batch_size": BATCH, "batch_interval": f"{int(INTERVAL * 1000)}ms"})
    with serving(spec, folder / "state") as r:
        r.ptype, r.models = ptype, folder / "models" / "iris"
        yield r


def body(ptype: str, x: np.ndarray) -> dict:
    return {KEY[ptype]: x.tolist()}


def own_rows(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 8, size=(int(rng.integers(1, 4)), 4)).round(3).astype(np.float32)


def version_of(x: np.ndarray, answer: dict) -> int | None:
    """The version whose scores for exactly these rows the answer holds, or None (someone else's rows, a mix)."""
    scores = np.asarray(answer["scores"], dtype=np.float64)
    for v, b in BIAS.items():
        want = x.astype(np.float64) @ W + b
        if scores.shape == want.shape and np.allclose(scores, want, atol=1e-3) and \
                list(answer["label"]) == want.argmax(axis=1).tolist():
            return v
    return None


def burst(r, bodies: list[dict], params: dict | None = None) -> list[requests.Response]:
    """POST every body at once, each from its own thread and connection."""
    start = threading.Barrier(len(bodies))

    def one(b: dict) -> requests.Response:
        start.wait()
        return requests.post(r.base + "/", json=b, params=params, timeout=30)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def batches(r) -> tuple[int, int]:
    """(batches run, batches of more than one request) from /metrics."""
    total = single = 0
    for family in text_string_to_metric_families(r.get("/metrics").text):
        if family.name == "replica_batch_size":
            for s in family.samples:
                if s.name == "replica_batch_size_count":
                    total += int(s.value)
                elif s.name == "replica_batch_size_bucket" and s.labels["le"] == "1.0":
                    single += int(s.value)
    return total, total - single


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served):
    rng = np.random.default_rng(0)
    before = batches(served)
    for _ in range(3):
        xs = [own_rows(rng) for _ in range(BATCH)]
        answers = burst(served, [body(served.ptype, x) for x in xs])
        for x, resp in zip(xs, answers):
            assert resp.status_code == 200, resp.text
            assert version_of(x, resp.json()) == 1, (x.tolist(), resp.json())
    total, multi = batches(served)
    assert total > before[0]
    assert multi > before[1], "no batch of more than one request under 8 concurrent clients"


def test_v2_requests_join_the_same_batches(served):
    """Open Inference Protocol requests run through the same batcher as Cortex's, for every predictor type."""
    rng = np.random.default_rng(2)
    xs = [own_rows(rng) for _ in range(BATCH)]
    start = threading.Barrier(BATCH)

    def one(i: int) -> dict:
        start.wait()
        x = xs[i]
        if i % 2:
            resp = requests.post(served.base + "/", json=body(served.ptype, x), timeout=30)
            assert resp.status_code == 200, resp.text
            return resp.json()
        resp = requests.post(served.base + "/v2/models/test-api/infer", timeout=30, json={"inputs": [
            {"name": KEY[served.ptype], "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]})
        assert resp.status_code == 200, resp.text
        out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in resp.json()["outputs"]}
        return {"scores": out["scores"], "label": out["label"].tolist()}

    before = batches(served)
    with ThreadPoolExecutor(BATCH) as pool:
        answers = list(pool.map(one, range(BATCH)))
    for x, answer in zip(xs, answers):
        assert version_of(x, answer) == 1, (x.tolist(), answer)
    assert batches(served)[1] > before[1], "no batch of more than one request"


def test_a_bad_request_in_a_batch_gets_400_and_the_others_200(served):
    rng = np.random.default_rng(1)
    k = KEY[served.ptype]
    good = [own_rows(rng) for _ in range(BATCH - 3)]
    bad = [{k: [[1, 2, 3, 4, 5]]},  # wrong trailing shape
           {k: [["a", "b", "c", "d"]]},  # wrong dtype
           {"wrong_key": [[1, 2, 3, 4]]}]  # wrong key
    answers = burst(served, bad + [body(served.ptype, x) for x in good])
    for b, resp in zip(bad, answers):
        assert resp.status_code == 400, (b, resp.status_code, resp.text)
        assert resp.json()["error"]
    for x, resp in zip(good, answers[len(bad):]):
        assert resp.status_code == 200, resp.text
        assert version_of(x, resp.json()) == 1


def test_a_lone_request_is_answered_within_the_batch_interval_plus_its_run(served):
    x = np.asarray([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    with requests.Session() as s:
        s.post(served.base + "/", json=body(served.ptype, x), timeout=30)  # connection open, model warm
        started = time.perf_counter()
        resp = s.post(served.base + "/", json=body(served.ptype, x), timeout=30)
        elapsed = time.perf_counter() - started
    assert resp.status_code == 200 and version_of(x, resp.json()) == 1
    # It waits for company for the whole interval, then runs alone: the model and HTTP take milliseconds here;
    # one second of margin for a machine that other tests keep busy.
    assert INTERVAL <= elapsed < INTERVAL + 1.0, elapsed


@pytest.mark.parametrize("served", ["python"], indirect=True)
def test_a_python_predictor_returning_the_wrong_length_is_a_500_that_says_so(served):
    resp = served.post("/?short=1", json={"x": [[1, 2, 3, 4]]})
    assert resp.status_code == 500
    assert "must return a list of the same length" in resp.json()["error"]
    assert "returned a list of 0" in resp.json()["error"]


def test_batching_survives_a_live_reload(served):
    """Clients keep sending while version 2 appears: no failed request, every answer is the client's own rows
    through one whole version, the replica moves to version 2, and batches keep forming on it."""
    stop = threading.Event()
    seen: list[tuple[float, float, int | None, int]] = []  # (sent, answered, version, status)
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as s:
            while not stop.is_set():
                x = own_rows(rng)
                sent = time.time()
                resp = s.post(served.base + "/", json=body(served.ptype, x), timeout=30)
                v = version_of(x, resp.json()) if resp.status_code == 200 else None
                with lock:
                    seen.append((sent, time.time(), v, resp.status_code))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(BATCH)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        write_version(served.ptype, served.models, 2)
        published = time.time()
        deadline = published + 90
        while time.time() < deadline:
            with lock:
                if sum(1 for t, _, v, _ in seen if t > published and v == 2) >= 3 * BATCH:
                    break
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert [s for *_, s in seen if s != 200] == []
    assert all(v in (1, 2) for *_, v, _ in seen), "an answer held other rows, or a mix of versions"
    assert any(v == 2 for *_, v, _ in seen), served.log()[-3000:]
    first_v2 = min(answered for _, answered, v, _ in seen if v == 2)
    assert all(v == 2 for sent, _, v, _ in seen if sent > first_v2)  # once a client saw v2, nobody gets v1 again
    before = batches(served)
    rng = np.random.default_rng(2)
    xs = [own_rows(rng) for _ in range(BATCH)]
    answers = burst(served, [body(served.ptype, x) for x in xs])
    assert [version_of(x, resp.json()) for x, resp in zip(xs, answers)] == [2] * BATCH
    assert batches(served)[1] > before[1]
