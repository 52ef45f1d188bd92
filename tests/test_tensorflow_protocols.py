"""TensorFlow SavedModels over the protocols their users' clients speak: TensorFlow Serving's REST API (row and
columnar formats, metadata) in the format TensorFlow Serving answers (its `g3doc/api_rest.md`), and the Open
Inference Protocol through `tritonclient.http`."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import tritonclient.http as httpclient

from scripts.model_factory import IRIS_BIAS, IRIS_BIAS_V2, IRIS_SAMPLES, IRIS_WEIGHTS, write_tf_linear, write_tf_mixed
from tests.helpers import serving, write_api

pytestmark = pytest.mark.tensorflow

PREDICTOR = """
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        return self.client.predict(payload, query_params["model"])
"""

FEATURES = np.asarray([x for x, _ in IRIS_SAMPLES], dtype=np.float32)


def _scores(features: np.ndarray, bias=IRIS_BIAS) -> np.ndarray:
    return features @ np.asarray(IRIS_WEIGHTS, dtype=np.float32) + np.asarray(bias, dtype=np.float32)


@pytest.fixture(scope="module")
def tf_replica(tmp_path_factory):
    """`iris` (x -> scores, label; versions 1 and 2) and `mixed` (x, text -> scores, label, text_length,
    echo_bytes)."""
    folder = tmp_path_factory.mktemp("tf-protocols")
    write_tf_linear(folder / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    write_tf_linear(folder / "models" / "iris" / "2", IRIS_WEIGHTS, IRIS_BIAS_V2)
    write_tf_mixed(folder / "models" / "mixed" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(folder, PREDICTOR, type="tensorflow", models={"paths": [
        {"name": "iris", "model_path": "models/iris", "signature_key": "serving_default"},
        {"name": "mixed", "model_path": "models/mixed"},
    ]})
    with serving(spec, folder / "state") as r:
        yield r


def _float32_text(values) -> None:
    """Each float is written as the shortest decimal of its float32, as TF Serving writes it."""
    for v in np.asarray(values, dtype=object).reshape(-1):
        assert repr(v) == repr(float(str(np.float32(v)))), v


# -- TF Serving's REST API ----------------------------------------------------------------------------------------
def test_row_format_one_input_several_outputs(tf_replica):
    """Several outputs: one object per instance (api_rest.md, "Response format", row format)."""
    resp = tf_replica.post("/v1/models/iris:predict", json={"instances": FEATURES[:2].tolist()})
    assert resp.status_code == 200, resp.text
    predictions = resp.json()["predictions"]
    assert [set(p) for p in predictions] == [{"scores", "label"}] * 2
    np.testing.assert_allclose([p["scores"] for p in predictions], _scores(FEATURES[:2], IRIS_BIAS_V2), rtol=1e-6)
    assert [p["label"] for p in predictions] == _scores(FEATURES[:2], IRIS_BIAS_V2).argmax(axis=1).tolist()
    _float32_text([p["scores"] for p in predictions])


def test_row_format_named_inputs_and_binary_values(tf_replica):
    text = "héllo".encode()
    resp = tf_replica.post("/v1/models/mixed/versions/1:predict", json={"signature_name": "serving_default",
        "instances": [{"x": FEATURES[0].tolist(), "text": {"b64": base64.b64encode(text).decode()}},
                      {"x": FEATURES[1].tolist(), "text": "plain"}]})
    assert resp.status_code == 200, resp.text
    first, second = resp.json()["predictions"]
    assert first["text_length"] == len(text) and second["text_length"] == 5
    # A string output whose name ends in _bytes is base64, as TF Serving answers it.
    assert first["echo_bytes"] == {"b64": base64.b64encode(text).decode()}
    assert second["echo_bytes"] == {"b64": base64.b64encode(b"plain").decode()}
    np.testing.assert_allclose(first["scores"], _scores(FEATURES[:1])[0], rtol=1e-6)


def test_columnar_format(tf_replica):
    resp = tf_replica.post("/v1/models/mixed:predict", json={
        "inputs": {"x": FEATURES[:3].tolist(), "text": ["a", "bb", "ccc"]}})
    assert resp.status_code == 200, resp.text
    outputs = resp.json()["outputs"]
    assert set(outputs) == {"scores", "label", "text_length", "echo_bytes"}
    assert outputs["text_length"] == [1, 2, 3]
    assert np.asarray(outputs["scores"]).shape == (3, 3)
    np.testing.assert_allclose(outputs["scores"], _scores(FEATURES[:3]), rtol=1e-6)
    _float32_text(outputs["scores"])
    one = tf_replica.post("/v1/models/iris/versions/1:predict", json={"inputs": FEATURES[:1].tolist()})
    assert set(one.json()["outputs"]) == {"scores", "label"}


@pytest.mark.parametrize("body,message", [
    ({"instances": [{"x": [1.0, 2.0, 3.0, 4.0]}]}, "text"),
    ({"instances": [[1, 2]], "inputs": [[1, 2]]}, "exactly one of"),
    ({"inputs": {"x": [[1.0, 2.0]], "text": ["a"]}}, "expects shape"),
    ({"signature_name": "nope", "instances": [[1.0, 2.0, 3.0, 4.0]]}, "not 'nope'"),
])
def test_bad_requests_answer_400_with_an_error(tf_replica, body, message):
    model = "iris" if "signature_name" in body else "mixed"
    resp = tf_replica.post(f"/v1/models/{model}:predict", json=body)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]


def test_unknown_model_is_404(tf_replica):
    resp = tf_replica.post("/v1/models/nope:predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]})
    assert resp.status_code == 404 and "nope" in resp.json()["error"]


def test_metadata_as_tf_serving_prints_it(tf_replica):
    resp = tf_replica.get("/v1/models/iris/versions/1/metadata")
    assert resp.status_code == 200, resp.text
    meta = resp.json()
    assert meta["model_spec"] == {"name": "iris", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "double"} <= set(defs)
    serving_default = defs["serving_default"]
    assert serving_default["method_name"] == "tensorflow/serving/predict"
    x = serving_default["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}], "unknown_rank": False}
    assert x["name"].endswith(":0")
    assert serving_default["outputs"]["label"]["dtype"] == "DT_INT64"
    assert tf_replica.get("/v1/models/iris/metadata").json()["model_spec"]["version"] == "2"
    # The status route keeps its format.
    status = tf_replica.get("/v1/models/iris").json()
    assert [v["version"] for v in status["model_version_status"]] == ["2", "1"]


# -- the Open Inference Protocol on a SavedModel -----------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_infer_on_a_signature(tf_replica, binary):
    c = httpclient.InferenceServerClient(f"127.0.0.1:{tf_replica.port}")
    try:
        meta = c.get_model_metadata("mixed")
        assert meta["platform"] == "tensorflow_savedmodel"
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                                  {"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert {(o["name"], o["datatype"]) for o in meta["outputs"]} == {
            ("scores", "FP32"), ("label", "INT64"), ("text_length", "INT32"), ("echo_bytes", "BYTES")}
        x = httpclient.InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(FEATURES[:2], binary_data=binary)
        text = httpclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.asarray([b"ab", b"cde"], dtype=object), binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "text_length")]
        result = c.infer("mixed", [x, text], outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("scores"), _scores(FEATURES[:2]), rtol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("text_length"), [2, 3])
        assert [o["name"] for o in result.get_response()["outputs"]] == ["scores", "text_length"]
    finally:
        c.close()
