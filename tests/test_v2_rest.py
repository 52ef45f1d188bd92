"""The Open Inference Protocol (KServe V2) over REST, driven by Triton's own client (`tritonclient.http`, which
sends and asks for binary tensors by default) and by plain JSON, against real replicas serving ONNX models.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from scripts.model_factory import IRIS_BIAS, IRIS_BIAS_V2, IRIS_SAMPLES, IRIS_WEIGHTS, write_onnx_linear, write_onnx_mixed
from tests.helpers import serving, write_api
from tests.replica_proc import wait_for

ONNX_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        return self.client.predict(payload, query_params.get("model"))
"""

FEATURES = np.asarray([x for x, _ in IRIS_SAMPLES], dtype=np.float32)


def _scores(features: np.ndarray, bias=IRIS_BIAS) -> np.ndarray:
    return features @ np.asarray(IRIS_WEIGHTS, dtype=np.float32) + np.asarray(bias, dtype=np.float32)


@pytest.fixture(scope="module")
def onnx_replica(tmp_path_factory):
    """Two ONNX models: `iris` (versions 1 and 2) and `mixed` (FP32, INT64 and BYTES inputs and outputs)."""
    folder = tmp_path_factory.mktemp("v2-onnx")
    write_onnx_linear(folder / "models" / "iris" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    write_onnx_linear(folder / "models" / "iris" / "2" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS_V2)
    write_onnx_mixed(folder / "models" / "mixed" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(folder, ONNX_PREDICTOR, type="onnx", models={"dir": "models"})
    with serving(spec, folder / "state") as r:
        yield r


@pytest.fixture
def client(onnx_replica):
    c = httpclient.InferenceServerClient(f"127.0.0.1:{onnx_replica.port}")
    yield c
    c.close()


def _mixed_inputs(binary: bool) -> list[httpclient.InferInput]:
    features = httpclient.InferInput("features", [3, 4], "FP32")
    features.set_data_from_numpy(FEATURES[:3], binary_data=binary)
    counts = httpclient.InferInput("counts", [3], "INT64")
    counts.set_data_from_numpy(np.asarray([1, -2, 3], dtype=np.int64), binary_data=binary)
    names = httpclient.InferInput("names", [3], "BYTES")
    names.set_data_from_numpy(np.asarray([b"setosa", "café".encode(), b""], dtype=object), binary_data=binary)
    return [features, counts, names]


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "model-replica"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


def test_model_metadata_names_datatypes_and_shapes(client):
    meta = client.get_model_metadata("mixed")
    assert meta["name"] == "mixed" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]},
                              {"name": "counts", "datatype": "INT64", "shape": [-1]},
                              {"name": "names", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("scores", "FP32"), ("label", "INT64"), ("doubled", "INT64"), ("names_out", "BYTES")]
    assert client.get_model_metadata("iris", "1")["versions"] == ["1", "2"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_every_datatype_binary_and_json(client, binary):
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in ("scores", "label", "doubled", "names_out")]
    result = client.infer("mixed", _mixed_inputs(binary), outputs=outputs, request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("scores"), _scores(FEATURES[:3]), rtol=1e-6)
    assert result.as_numpy("scores").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("label"), _scores(FEATURES[:3]).argmax(axis=1))
    np.testing.assert_array_equal(result.as_numpy("doubled"), [2, -4, 6])
    assert result.as_numpy("doubled").dtype == np.int64
    names = [n if isinstance(n, bytes) else n.encode() for n in result.as_numpy("names_out").tolist()]
    assert names == [b"setosa", "café".encode(), b""]  # tritonclient gives JSON BYTES data as str
    response = result.get_response()
    assert response["model_name"] == "mixed" and response["model_version"] == "1" and response["id"] == "req-7"


def test_infer_with_the_clients_defaults_answers_binary_outputs(client):
    """No outputs named: tritonclient asks for every output as binary data (binary_data_output)."""
    result = client.infer("mixed", _mixed_inputs(True))
    assert {o["name"] for o in result.get_response()["outputs"]} == {"scores", "label", "doubled", "names_out"}
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_array_equal(result.as_numpy("doubled"), [2, -4, 6])


def test_requested_outputs_only(client):
    result = client.infer("mixed", _mixed_inputs(True), outputs=[httpclient.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("scores") is None


def test_versions_by_route(client):
    x = httpclient.InferInput("input", [1, 4], "FP32")
    x.set_data_from_numpy(FEATURES[:1])
    latest = client.infer("iris", [x])
    first = client.infer("iris", [x], model_version="1")
    assert latest.get_response()["model_version"] == "2" and first.get_response()["model_version"] == "1"
    np.testing.assert_allclose(latest.as_numpy("scores"), _scores(FEATURES[:1], IRIS_BIAS_V2), rtol=1e-6)
    np.testing.assert_allclose(first.as_numpy("scores"), _scores(FEATURES[:1]), rtol=1e-6)


@pytest.mark.parametrize("shape,datatype,data,message", [
    ([1, 3], "FP32", np.zeros((1, 3), np.float32), "expects shape [-1, 4]"),
    ([1, 4], "FP64", np.zeros((1, 4), np.float64), "is FP32, got FP64"),
])
def test_wrong_shape_or_datatype_is_a_400_naming_it(client, shape, datatype, data, message):
    x = httpclient.InferInput("input", shape, datatype)
    x.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as e:
        client.infer("iris", [x])
    assert e.value.status() == "400" and message in e.value.message()


def test_unknown_model_and_input_are_named(client, onnx_replica):
    x = httpclient.InferInput("input", [1, 4], "FP32")
    x.set_data_from_numpy(FEATURES[:1])
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [x])
    assert e.value.status() == "404" and "nope" in e.value.message()
    resp = onnx_replica.post("/v2/models/iris/infer", json={"inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert resp.status_code == 400 and "no input 'extra'" in resp.json()["error"]


def test_plain_json_nested_or_flat_data(onnx_replica):
    """What a curl user sends: nested or flat `data`, answered as JSON with flat data."""
    for data in (FEATURES[:2].tolist(), FEATURES[:2].reshape(-1).tolist()):
        resp = onnx_replica.post("/v2/models/iris/versions/1/infer", json={
            "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": data}],
            "outputs": [{"name": "label"}]})
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json()["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [2],
                                           "data": _scores(FEATURES[:2]).argmax(axis=1).tolist()}]


@pytest.mark.parametrize("body,message", [
    (b"{not json", "malformed JSON"),
    (json.dumps({"inputs": []}).encode(), "non-empty \"inputs\""),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}).encode(),
     "has 3 values; shape [1, 4] needs 4"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP99", "data": [1, 2, 3, 4]}]}).encode(),
     "datatype 'FP99' is not supported"),
])
def test_malformed_requests_answer_400_in_the_error_body(onnx_replica, body, message):
    resp = onnx_replica.post("/v2/models/iris/infer", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and message in resp.json()["error"], resp.text


def test_binary_extension_by_hand(onnx_replica):
    """The extension's framing without tritonclient: JSON header, then the raw tensor; binary output back."""
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 16}}],
                       "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]}).encode()
    resp = onnx_replica.post("/v2/models/iris/versions/1/infer", data=head + FEATURES[0].tobytes(),
                             headers={"Inference-Header-Content-Length": str(len(head)),
                                      "Content-Type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    n = int(resp.headers["Inference-Header-Content-Length"])
    answer = json.loads(resp.content[:n])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == 12
    np.testing.assert_allclose(np.frombuffer(resp.content[n:], dtype="<f4"), _scores(FEATURES[:1])[0], rtol=1e-6)
    short = onnx_replica.post("/v2/models/iris/infer", data=head + b"\0" * 8,
                              headers={"Inference-Header-Content-Length": str(len(head))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]


def test_v2_predictions_are_counted_like_the_cortex_route(onnx_replica, client):
    x = httpclient.InferInput("input", [1, 4], "FP32")
    x.set_data_from_numpy(FEATURES[:1])
    client.infer("iris", [x], model_version="1")
    metrics = onnx_replica.get("/metrics").text
    assert any(line.startswith("replica_requests_total{") and 'model="iris"' in line and 'version="1"' in line
               and 'code="200"' in line for line in metrics.splitlines()), metrics[-3000:]


def test_a_made_up_model_name_never_becomes_a_metrics_label(onnx_replica):
    onnx_replica.post("/v2/models/made-up-name/infer", json={"inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    onnx_replica.post("/v2/models/iris/infer", json={"inputs": [
        {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    metrics = onnx_replica.get("/metrics").text
    assert "made-up-name" not in metrics
    assert any(line.startswith("replica_requests_total{") and 'model="iris"' in line and 'code="400"' in line
               for line in metrics.splitlines())


def test_repository_index_without_caching(client, onnx_replica):
    index = client.get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("iris", "1", "READY"), ("iris", "2", "READY"), ("mixed", "1", "READY")}
    client.load_model("iris")  # in memory already: nothing to do
    with pytest.raises(InferenceServerException) as e:
        client.unload_model("iris")
    assert e.value.status() == "400" and "cache_size" in e.value.message()


# -- with model caching, load and unload move models in and out of memory ----------------------------------------
@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2-cache")
    for name in ("a", "b"):
        write_onnx_linear(folder / "models" / name / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(folder, ONNX_PREDICTOR, type="onnx",
                     models={"dir": "models", "cache_size": 1, "disk_cache_size": 2})
    with serving(spec, folder / "state") as r:
        yield r


def _in_memory(replica) -> set[str]:
    models = replica.get("/v1/models").json()["models"]
    return {m["name"] for m in models for v in m["model_version_status"] if v["memory"]}


def test_repository_load_and_unload_with_caching(cached):
    c = httpclient.InferenceServerClient(f"127.0.0.1:{cached.port}")
    try:
        assert _in_memory(cached) == set()
        assert c.is_model_ready("a")  # not in memory, but a request would be answered
        assert {m["state"] for m in c.get_model_repository_index()} == {"UNAVAILABLE"}
        c.load_model("a")
        assert _in_memory(cached) == {"a"}
        ready = [(m["name"], m["state"]) for m in c.get_model_repository_index() if m["state"] == "READY"]
        assert ready == [("a", "READY")]
        c.load_model("b")  # cache_size 1: a makes room
        wait_for(lambda: _in_memory(cached) == {"b"}, message="b alone in memory")
        c.unload_model("b")
        wait_for(lambda: _in_memory(cached) == set(), message="b unloaded")
        x = httpclient.InferInput("input", [1, 4], "FP32")
        x.set_data_from_numpy(FEATURES[:1])
        assert c.infer("b", [x]).as_numpy("label").tolist() == [int(_scores(FEATURES[:1]).argmax())]
        with pytest.raises(InferenceServerException) as e:
            c.load_model("nope")
        assert e.value.status() == "404"
    finally:
        c.close()


def test_repository_index_ready_filter(cached):
    resp = cached.post("/v2/repository/index", json={"ready": True})
    assert resp.status_code == 200
    assert all(m["state"] == "READY" for m in resp.json())


# -- a Python predictor: the V2 tensors reach predict as a dict of arrays -----------------------------------------
PYTHON_PREDICTOR = """
import numpy as np


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload, query_params):
        x = payload["x"]
        return {"sum": x.sum(axis=-1), "model": np.asarray([query_params["model"]]), "dtype": str(x.dtype)}
"""


def test_python_predictor_over_v2(tmp_path):
    spec = write_api(tmp_path, PYTHON_PREDICTOR, type="python", name="summer")
    with serving(spec, tmp_path / "state") as r:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{r.port}")
        try:
            assert c.is_model_ready("summer")
            x = httpclient.InferInput("x", [2, 3], "INT32")
            x.set_data_from_numpy(np.arange(6, dtype=np.int32).reshape(2, 3))
            result = c.infer("summer", [x])
            np.testing.assert_array_equal(result.as_numpy("sum"), [3, 12])
            assert result.as_numpy("model").tolist() == [b"summer"]
            assert result.as_numpy("dtype").tolist() == b"int32"  # a 0-d BYTES tensor
            meta = c.get_model_metadata("summer")
            assert meta["platform"] == "python" and meta["inputs"] == []
        finally:
            c.close()
