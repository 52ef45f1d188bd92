"""A real replica serving TensorFlow SavedModels from local directories, with a signature chosen per model.

`tensorflow_client.predict` returns Cortex's flat lists (tests/test_cortex_examples.py covers what Cortex's
examples do with them); `predict_arrays`, the opt-in, keeps shapes and dtypes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from scripts.model_factory import IRIS_BIAS, IRIS_SAMPLES, IRIS_WEIGHTS, write_tf_linear
from tests.helpers import serving, write_api

pytestmark = pytest.mark.tensorflow

FEATURES = [x for x, _ in IRIS_SAMPLES]
SCORES = np.asarray(FEATURES) @ np.asarray(IRIS_WEIGHTS) + np.asarray(IRIS_BIAS)

PREDICTOR = """
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        name = query_params["model"]
        if query_params.get("op") == "get_model":
            model = self.client.get_model(name)
            return {"signature_key": model["signature_key"], "input_signatures": model["input_signatures"]}
        if query_params.get("op") == "arrays":
            out = self.client.predict_arrays(payload, name)
            return {k: {"value": v, "shape": list(v.shape), "dtype": v.dtype.name} for k, v in out.items()}
        return self.client.predict(payload, name)
"""


@pytest.fixture(scope="module")
def tf_replica(tmp_path_factory):
    """One SavedModel (signatures serving_default and double) served as three models:
    "iris" (signature_key serving_default), "doubled" (signature_key double), "plain" (no signature_key)."""
    folder = tmp_path_factory.mktemp("tensorflow")
    write_tf_linear(folder / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    shutil.copytree(folder / "models" / "iris", folder / "models" / "doubled")
    shutil.copytree(folder / "models" / "iris", folder / "models" / "plain")
    spec = write_api(folder, PREDICTOR, type="tensorflow", models={"paths": [
        {"name": "iris", "model_path": "models/iris", "signature_key": "serving_default"},
        {"name": "doubled", "model_path": "models/doubled", "signature_key": "double"},
        {"name": "plain", "model_path": "models/plain"},
    ]})
    with serving(spec, folder / "state") as r:
        yield r


def test_predict_returns_flat_lists_as_cortex_did(tf_replica):
    resp = tf_replica.post("/?model=iris", json={"x": FEATURES})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out) == {"scores", "label"}
    np.testing.assert_allclose(out["scores"], SCORES.reshape(-1), rtol=1e-5)  # [3, 3] flattened
    assert out["label"] == ["0", "1", "2"]  # int64: decimal strings, as protobuf's JSON mapping gave them


def test_predict_arrays_keeps_shapes_and_dtypes(tf_replica):
    resp = tf_replica.post("/?model=iris&op=arrays", json={"x": FEATURES})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["scores"]["shape"] == [3, 3] and out["scores"]["dtype"] == "float32"
    assert out["label"]["shape"] == [3] and out["label"]["dtype"] == "int64"
    np.testing.assert_allclose(out["scores"]["value"], SCORES, rtol=1e-5)
    assert out["label"]["value"] == [0, 1, 2]


def test_batch_of_one_is_not_squeezed(tf_replica):
    resp = tf_replica.post("/?model=iris&op=arrays", json={"x": FEATURES[:1]})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["scores"]["shape"] == [1, 3]
    assert out["label"]["shape"] == [1]
    assert out["scores"]["value"] == [pytest.approx(list(SCORES[0]), rel=1e-5)]


def test_one_row_without_its_batch_dimension_is_a_batch_of_one(tf_replica):
    # TF Serving fed a lower-rank value without a shape check; here leading dimensions of size 1 are added.
    resp = tf_replica.post("/?model=iris&op=arrays", json={"x": FEATURES[0]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["scores"]["shape"] == [1, 3]


def test_signature_key_per_model(tf_replica):
    resp = tf_replica.post("/?model=doubled", json={"x": FEATURES})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out) == {"scores"}
    np.testing.assert_allclose(out["scores"], 2 * SCORES.reshape(-1), rtol=1e-5)
    assert tf_replica.post("/?model=doubled&op=get_model", json={}).json()["signature_key"] == "double"


def test_multi_signature_model_without_signature_key_uses_serving_default(tf_replica):
    model = tf_replica.post("/?model=plain&op=get_model", json={})
    assert model.status_code == 200, model.text
    assert model.json() == {"signature_key": "serving_default",
                            "input_signatures": {"x": {"shape": [None, 4], "type": "float32"}}}
    resp = tf_replica.post("/?model=plain", json={"x": FEATURES})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out) == {"scores", "label"}
    np.testing.assert_allclose(out["scores"], SCORES.reshape(-1), rtol=1e-5)


@pytest.mark.parametrize("payload, words", [
    ({"x": [[1.0, 2.0, 3.0]]}, ["'x'", "shape [None, 4]"]),
    ({"x": [[[1.0, 2.0, 3.0, 4.0]]]}, ["'x'", "shape [None, 4], got [1, 1, 4]"]),
    ({"y": FEATURES}, ["missing", "x"]),
    ({"x": [["a", "b", "c", "d"]]}, ["'x'", "float32"]),
], ids=["wrong-shape", "higher-rank", "missing-key", "wrong-type"])
def test_bad_input_is_400_naming_the_input(tf_replica, payload, words):
    resp = tf_replica.post("/?model=iris", json=payload)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert all(w in error for w in words), error
