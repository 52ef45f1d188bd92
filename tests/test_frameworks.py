"""The Python predictor's `load_model` with every framework the documentation lists, end to end: the bundled
examples/<framework>/predictor.py, served by a real replica from SeaweedFS, with model caching and live
reloading (DESIGN.md sections 3 and 7).

Frameworks: an MLflow scikit-learn model folder (mlflow.sklearn), a joblib scikit-learn model, a PyTorch state
dict, a NumPy array, a pandas table (Parquet) and an ONNX model run by onnxruntime inside the Python predictor.
Every model is the iris linear classifier of scripts/model_factory.py written by scripts/framework_models.py
with its own bias, so each answer is checked against `x @ W + b` and tells which model and version served it.

One replica per framework (each needs its own predictor), with two models and `cache_size: 1`,
`disk_cache_size: 2`: it asserts a real prediction, evictions from memory (and, once a third version exists,
from disk) with the evicted model's memory released (a weak reference to what `load_model` returned is dead, and PyTorch's `unload_model` ran), a
reload after the eviction, and a version 2 uploaded to S3 while a client keeps asking, picked up with no failed
request. No GPU here: the CPU path is what runs, and the log must say so.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from scripts.framework_models import FEATURES, FRAMEWORKS, linear_scores, write_model
from scripts.model_factory import IRIS_BIAS, IRIS_BIAS_V2, IRIS_LABELS, IRIS_SAMPLES, IRIS_WEIGHTS
from tests.helpers import write_api
from tests.replica_proc import wait_for
from tests.s3server import upload_dir

pytestmark = pytest.mark.frameworks

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# (model, version) -> bias; every one gives different scores for the samples.
BIASES = {
    ("a", 1): IRIS_BIAS,
    ("a", 2): IRIS_BIAS_V2,
    ("b", 1): [7.0, 1.0, -12.0],
}
ROWS = [features for features, _ in IRIS_SAMPLES]
PAYLOAD = [dict(zip(FEATURES, row)) for row in ROWS]

# Appended to the example's predictor: the same class plus a probe that reports which of the objects
# `load_model` returned are still alive, and how often `unload_model` ran.
PROBE = '''

# ---- test probe (tests/test_frameworks.py) ----
import gc as _gc
import weakref as _weakref

_Example = PythonPredictor


class PythonPredictor(_Example):
    def __init__(self, config, python_client):
        super().__init__(config, python_client)
        self._probe_refs = []
        self._probe_unloads = 0

    def load_model(self, model_path):
        model = super().load_model(model_path)
        self._probe_refs.append(("/".join(model_path.rstrip("/").split("/")[-2:]), _weakref.ref(model)))
        return model

    def unload_model(self, model):
        if hasattr(_Example, "unload_model"):
            super().unload_model(model)
        self._probe_unloads += 1

    def predict(self, payload, query_params):
        if query_params.get("probe") == "memory":
            _gc.collect()
            return {"alive": sorted(p for p, ref in self._probe_refs if ref() is not None),
                    "loads": len(self._probe_refs), "unloads": self._probe_unloads}
        return super().predict(payload, query_params)
'''


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """built(framework, model, version) -> a local folder holding that version, written once."""
    root = tmp_path_factory.mktemp("framework-models")

    def build(framework: str, model: str, version: int) -> Path:
        folder = root / framework / model / str(version)
        if not folder.exists():
            write_model(framework, folder, IRIS_WEIGHTS, BIASES[(model, version)])
        return folder

    return build


def check_prediction(resp: requests.Response, model: str, version: int) -> str | None:
    """None when `resp` is the right answer of `model` at `version` for PAYLOAD, else what is wrong."""
    if resp.status_code != 200:
        return f"{model}: HTTP {resp.status_code} {resp.text[:300]}"
    body = resp.json()
    want = linear_scores(ROWS, IRIS_WEIGHTS, BIASES[(model, version)])
    if not isinstance(body, list) or len(body) != len(ROWS):
        return f"{model}: unexpected answer {body!r}"
    got = np.asarray([row["scores"] for row in body], dtype=np.float64)
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-4):
        return f"{model}: scores {got.tolist()} are not version {version}'s {want.tolist()}"
    labels = [row["label"] for row in body]
    if labels != [IRIS_LABELS[i] for i in np.argmax(want, axis=1)]:
        return f"{model}: labels {labels}"
    return None


def ask(r, model: str, **params) -> requests.Response:
    return r.post("/", params={"model": model, **params}, json=PAYLOAD, timeout=60)


def probe(r) -> dict:
    resp = r.post("/", params={"model": "a", "probe": "memory"}, json={}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def locations(r) -> dict[str, dict[str, bool]]:
    """"model/version" -> {"upstream", "disk", "memory"} from GET /v1/models."""
    body = r.get("/v1/models").json()
    return {f"{m['name']}/{row['version']}": {k: row[k] for k in ("upstream", "disk", "memory")}
            for m in body["models"] for row in m["model_version_status"]}


def in_memory(r) -> list[str]:
    return sorted(k for k, where in locations(r).items() if where["memory"])


def count(r, pattern: str) -> int:
    return len(re.findall(pattern, r.log()))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_framework_versions_eviction_and_live_reload(framework, s3, s3_client, bucket, replica, tmp_path, built):
    for model, version in (("a", 1), ("b", 1)):
        upload_dir(s3_client, bucket, built(framework, model, version), f"models/{model}/{version}")
    source = (EXAMPLES / framework / "predictor.py").read_text() + PROBE
    spec = write_api(tmp_path / "api", source, type="python", name=f"frameworks-{framework}",
                     models={"dir": f"s3://{bucket}/models/", "cache_size": 1, "disk_cache_size": 2},
                     threads_per_process=2, python_path=str(EXAMPLES),  # examples/iris_payload.py
                     config={"labels": IRIS_LABELS, "device": "auto"})
    r = replica(spec, env=s3.env, poll_interval=1.0)

    # 1. A real prediction from the model load_model returned (version 1, the documented iris answers).
    resp = ask(r, "a")
    assert check_prediction(resp, "a", 1) is None, check_prediction(resp, "a", 1)
    assert [row["label"] for row in resp.json()] == [label for _, label in IRIS_SAMPLES]
    assert in_memory(r) == ["a/1"]

    # 2. Two models, room for one in memory: b evicts a; a's model object is gone.
    resp = ask(r, "b")
    assert check_prediction(resp, "b", 1) is None, check_prediction(resp, "b", 1)
    expected = {"a/1": {"upstream": True, "disk": True, "memory": False},
                "b/1": {"upstream": True, "disk": True, "memory": True}}
    # The disk column comes from the supervisor's state, which may be published a moment after the fetch.
    wait_for(lambda: locations(r) == expected, timeout=10, message=f"/v1/models showing {expected}")
    assert count(r, r"model a version 1 evicted from memory") == 1
    state = probe(r)
    assert state["alive"] == ["b/1"] and state["unloads"] == 1, state

    # 3. ... and comes back when asked for again, evicting b.
    assert check_prediction(ask(r, "a"), "a", 1) is None
    assert in_memory(r) == ["a/1"]
    assert count(r, r"loading model a version 1\b") == 2
    state = probe(r)
    assert state["alive"] == ["a/1"] and state["unloads"] == 2, state

    # 4. Version 2 uploaded while a client keeps asking for "latest": picked up, no failed request.
    answers: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            resp = session.post(r.base + "/", params={"model": "a"}, json=PAYLOAD, timeout=60)
            for version in (1, 2):
                if check_prediction(resp, "a", version) is None:
                    answers.append(version)
                    break
            else:
                errors.append(check_prediction(resp, "a", 1) or "?")

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(answers) >= 3, timeout=30, message="the client is served version 1")
        folder = built(framework, "a", 2)
        if framework == "mlflow":
            # An MLflow model is a folder of files: here the replica sees it half-uploaded first (MLmodel alone),
            # fails to load that, and keeps serving version 1 until the rest has arrived.
            s3_client.put_object(Bucket=bucket, Key="models/a/2/MLmodel", Body=(folder / "MLmodel").read_bytes())
            wait_for(lambda: count(r, r"model a version 2 failed to load") >= 1, timeout=30,
                     message="the half-uploaded version tried")
            assert not errors and set(answers) == {1}, errors[:3]
        start = time.time()
        upload_dir(s3_client, bucket, folder, "models/a/2")
        wait_for(lambda: answers[-1] == 2, timeout=30, message="version 2 served")
        took = time.time() - start
        n = len(answers)
        wait_for(lambda: len(answers) >= n + 5, timeout=30, message="more answers after the swap")
    finally:
        stop.set()
        t.join(60)
    assert not errors, f"{len(errors)} failed requests during the reload, first: {errors[:3]}"
    first_v2 = answers.index(2)
    assert set(answers[first_v2:]) == {2}, "version 1 answered again after version 2"
    print(f"\n{framework}: version 2 served {took:.2f}s after its upload; {len(answers)} answers, none failed")
    assert check_prediction(ask(r, "a", version=1), "a", 1) is None  # version 1 is still there on request
    assert check_prediction(ask(r, "a"), "a", 2) is None

    # 5. Eviction and reload of the new version too; three versions, room for two on disk.
    assert check_prediction(ask(r, "b"), "b", 1) is None
    assert check_prediction(ask(r, "a"), "a", 2) is None
    assert in_memory(r) == ["a/2"]
    where = locations(r)
    assert all(w["upstream"] for w in where.values()) and sum(w["disk"] for w in where.values()) <= 2, where
    assert count(r, r"evicted from disk") >= 1
    state = probe(r)
    assert state["alive"] == ["a/2"], state
    assert state["unloads"] == state["loads"] - 1, state

    log = r.log()
    errors_logged = [line for line in log.splitlines() if " ERROR " in line]
    if framework == "mlflow":  # the half-uploaded version, and nothing else
        assert errors_logged and all("model a version 2 failed to load" in line for line in errors_logged), errors_logged
    else:
        assert not errors_logged and "Traceback" not in log, log[-3000:]
    if framework == "pytorch":
        assert re.search(r"torch 2\.13\.0\S*: models run on cpu \(config\.device: auto, CUDA available: False\)", log)
        assert count(r, r"released a torch model from cpu") == state["unloads"]
    if framework == "onnx-python":
        assert "sessions use CPUExecutionProvider (config.device: auto)" in log
        assert count(r, r"session for \S+ runs on CPUExecutionProvider") == state["loads"]
