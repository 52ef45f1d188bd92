"""A real replica serving ONNX models from a local directory, driven over HTTP like a Cortex user would."""

from __future__ import annotations


import numpy as np
import pytest

from scripts.model_factory import IRIS_BIAS, IRIS_LABELS, IRIS_SAMPLES, IRIS_WEIGHTS, write_onnx_linear
from tests.helpers import paused, serving, write_api

FEATURES = [x for x, _ in IRIS_SAMPLES]
EXPECTED = [label for _, label in IRIS_SAMPLES]

# What a Cortex user writes from the docs: the client gets the raw payload, outputs come back in graph order.
SINGLE_PREDICTOR = """
import os


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client
        self.labels = config["labels"]

    def predict(self, payload, query_params):
        if query_params.get("op") == "get_model":
            model = self.client.get_model()
            session = model["session"]
            return {
                "session": type(session).__name__,
                "signatures": [s.name for s in model["signatures"]],
                "input_signatures": model["input_signatures"],
                "outputs": [o.name for o in session.get_outputs()],
            }
        scores, label = self.client.predict(payload)
        return {"scores": scores, "labels": [self.labels[i] for i in label], "pid": os.getpid()}
"""


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """One ONNX model through `model_path` (a versioned folder: 1/model.onnx)."""
    folder = tmp_path_factory.mktemp("onnx-single")
    write_onnx_linear(folder / "models" / "iris" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(folder, SINGLE_PREDICTOR, type="onnx", model_path="models/iris", config={"labels": IRIS_LABELS})
    with serving(spec, folder / "state") as r:
        yield r


def test_predicts_a_batch_from_a_raw_nested_list(iris):
    resp = iris.post("/", json=FEATURES)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["labels"] == EXPECTED
    want = np.asarray(FEATURES) @ np.asarray(IRIS_WEIGHTS) + np.asarray(IRIS_BIAS)
    np.testing.assert_allclose(body["scores"], want, rtol=1e-5)


def test_predict_route_is_the_same_as_root(iris):
    resp = iris.post("/predict", json=FEATURES[:1])
    assert resp.status_code == 200, resp.text
    assert resp.json()["labels"] == EXPECTED[:1]


def test_one_example_without_batch_dimension(iris):
    """Cortex's iris example sends four numbers to a [batch, 4] model."""
    resp = iris.post("/", json=FEATURES[2])
    assert resp.status_code == 200, resp.text
    assert resp.json()["labels"] == [EXPECTED[2]]


def test_get_model_returns_session_and_signatures(iris):
    resp = iris.post("/?op=get_model", json={})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["session"] == "InferenceSession"
    assert body["signatures"] == ["input"]
    assert body["input_signatures"] == {"input": {"shape": ["batch", 4], "type": "float32"}}
    assert body["outputs"] == ["scores", "label"]


@pytest.mark.parametrize("bad", [[[1.0, 2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0, 3.0], [[[1.0, 2.0, 3.0]]]],
                         ids=["3-features", "2x2", "flat-3", "3-dims"])
def test_wrong_input_shape_is_400_naming_the_input(iris, bad):
    resp = iris.post("/", json=bad)
    assert resp.status_code == 400, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert "'input'" in error and "shape" in error


def test_wrong_input_type_is_400_naming_the_input(iris):
    resp = iris.post("/", json=[["a", "b", "c", "d"]])
    assert resp.status_code == 400, resp.text
    assert "'input'" in resp.json()["error"]


MULTI_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        scores, label = self.client.predict(payload, query_params["model"])
        return {"label": label, "scores": scores}
"""


def test_multi_model_paths_picked_by_query_parameter(tmp_path, replica):
    # Two models with the same weights but different biases: "iris" is the real classifier, "virginica"
    # is biased so far towards class 2 that it always answers virginica.
    write_onnx_linear(tmp_path / "models" / "iris" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    write_onnx_linear(tmp_path / "models" / "virginica" / "1" / "model.onnx", IRIS_WEIGHTS, [0.0, 0.0, 100.0])
    spec = write_api(tmp_path, MULTI_PREDICTOR, type="onnx", models={"paths": [
        {"name": "iris", "model_path": "models/iris"},
        {"name": "virginica", "model_path": "models/virginica"},
    ]})
    r = replica(spec)

    iris = r.post("/?model=iris", json=FEATURES)
    assert iris.status_code == 200, iris.text
    assert iris.json()["label"] == [0, 1, 2]
    virginica = r.post("/?model=virginica", json=FEATURES)
    assert virginica.status_code == 200, virginica.text
    assert virginica.json()["label"] == [2, 2, 2]
    np.testing.assert_allclose(np.asarray(virginica.json()["scores"]) - np.asarray(iris.json()["scores"]),
                               np.tile(np.subtract([0.0, 0.0, 100.0], IRIS_BIAS), (3, 1)), rtol=1e-4)


def test_three_processes_all_answer(tmp_path, replica):
    write_onnx_linear(tmp_path / "models" / "iris" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(tmp_path, SINGLE_PREDICTOR, type="onnx", model_path="models/iris",
                     config={"labels": IRIS_LABELS}, processes_per_replica=3)
    r = replica(spec)
    assert r.get("/readyz").json()["workers"] == 3
    workers = set(r.worker_pids())
    assert len(workers) == 3

    # Any worker may accept a new connection; with the others paused, each one in turn has to.
    for pid in workers:
        with paused(workers - {pid}):
            resp = r.post("/", json=FEATURES, headers={"Connection": "close"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["labels"] == EXPECTED
        assert resp.json()["pid"] == pid
