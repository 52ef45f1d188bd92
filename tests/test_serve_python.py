"""A real replica running python predictors: versioned models, no models, response and body types, post_predict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts.model_factory import IRIS_BIAS, IRIS_BIAS_V2, IRIS_SAMPLES, IRIS_WEIGHTS, write_python_linear
from tests.helpers import serving, write_api
from tests.predictors import LINEAR, json_predictor
from tests.replica_proc import wait_for

VERSIONED_PREDICTOR = json_predictor("""
def predict(self, payload, query_params):
    if "version" in query_params:
        model = self.client.get_model("iris", query_params["version"])
    else:
        model = self.client.get_model("iris")
    return {"bias": model["bias"], "scores": np.asarray(payload) @ model["weights"] + model["bias"]}
""", load=LINEAR)


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    """Model "iris" with versions 1 (IRIS_BIAS) and 2 (IRIS_BIAS_V2)."""
    folder = tmp_path_factory.mktemp("python-versioned")
    write_python_linear(folder / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    write_python_linear(folder / "models" / "iris" / "2", IRIS_WEIGHTS, IRIS_BIAS_V2)
    spec = write_api(folder, VERSIONED_PREDICTOR, type="python",
                     models={"paths": [{"name": "iris", "model_path": "models/iris"}]})
    with serving(spec, folder / "state") as r:
        yield r


@pytest.mark.parametrize("query, bias", [
    ("", IRIS_BIAS_V2),
    ("?version=latest", IRIS_BIAS_V2),
    ("?version=2", IRIS_BIAS_V2),
    ("?version=1", IRIS_BIAS),
], ids=["no-version", "latest", "v2", "v1"])
def test_versioned_model_by_query_parameter(versioned, query, bias):
    x = IRIS_SAMPLES[1][0]
    resp = versioned.post("/" + query, json=x)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["bias"] == pytest.approx(bias)
    assert body["scores"] == pytest.approx(list(np.asarray(x) @ np.asarray(IRIS_WEIGHTS) + np.asarray(bias)))


def test_missing_version_is_404_naming_the_versions(versioned):
    resp = versioned.post("/?version=3", json=IRIS_SAMPLES[0][0])
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert "iris" in error and "3" in error


def test_models_endpoint_lists_both_versions(versioned):
    resp = versioned.get("/v1/models/iris")
    assert resp.status_code == 200, resp.text
    states = {row["version"]: row["state"] for row in resp.json()["model_version_status"]}
    assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}


NO_MODEL_PREDICTOR = """
import json

import numpy as np
from flask import Response


class PythonPredictor:
    def __init__(self, config):
        self.greeting = config["greeting"]
        self.post_file = config["post_file"]

    def predict(self, payload, query_params):
        kind = query_params.get("kind", "describe")
        if kind == "dict":
            return {"array": np.arange(6, dtype=np.int32).reshape(2, 3), "float": np.float32(1.5),
                    "int": np.int64(7), "nested": [np.array([0.5, 0.25])]}
        if kind == "list":
            return [1, np.float64(2.5), "three"]
        if kind == "str":
            return f"{self.greeting}, {payload}"
        if kind == "bytes":
            return bytes(range(256))
        if kind == "response":
            return Response("a,b\\n1,2\\n", status=201, mimetype="text/csv", headers={"X-Model": "none"})
        # describe: what the predictor received
        if isinstance(payload, bytes):
            return {"type": "bytes", "value": list(payload)}
        return {"type": type(payload).__name__, "value": payload}

    def post_predict(self, response, payload, query_params):
        if query_params.get("tag") == "raise":
            raise ValueError("post_predict failed on purpose")
        if "tag" in query_params:
            with open(self.post_file, "a") as f:
                f.write(json.dumps({"tag": query_params["tag"], "status": response.status_code,
                                    "mimetype": response.mimetype, "payload": payload}) + "\\n")
"""


@pytest.fixture(scope="module")
def no_models(tmp_path_factory):
    """A python predictor whose spec has no models: `__init__(self, config)` only."""
    folder = tmp_path_factory.mktemp("python-no-models")
    spec = write_api(folder, NO_MODEL_PREDICTOR, type="python",
                     config={"greeting": "hello", "post_file": str(folder / "post_predict.jsonl")})
    with serving(spec, folder / "state") as r:
        r.post_file = folder / "post_predict.jsonl"
        yield r


def test_dict_with_numpy_values_is_json(no_models):
    resp = no_models.post("/?kind=dict", json={})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == {"array": [[0, 1, 2], [3, 4, 5]], "float": 1.5, "int": 7, "nested": [[0.5, 0.25]]}


def test_list_is_json(no_models):
    resp = no_models.post("/?kind=list", json={})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == [1, 2.5, "three"]


def test_str_is_text_plain(no_models):
    resp = no_models.post("/?kind=str", data="wörld".encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text == "hello, wörld"


def test_bytes_is_octet_stream(no_models):
    resp = no_models.post("/?kind=bytes", json={})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.content == bytes(range(256))


def test_flask_response_is_sent_as_is(no_models):
    resp = no_models.post("/?kind=response", json={})
    assert resp.status_code == 201, resp.text
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert resp.headers["X-Model"] == "none"
    assert resp.text == "a,b\n1,2\n"


@pytest.mark.parametrize("kwargs, want", [
    ({"json": {"a": [1, 2]}}, {"type": "dict", "value": {"a": [1, 2]}}),
    ({"json": [1, "x"]}, {"type": "list", "value": [1, "x"]}),
    ({"data": "plain text".encode(), "headers": {"Content-Type": "text/plain"}}, {"type": "str", "value": "plain text"}),
    ({"data": "grüße".encode("latin-1"), "headers": {"Content-Type": "text/plain; charset=latin-1"}},
     {"type": "str", "value": "grüße"}),
    ({"data": b"\x00\x01\x02", "headers": {"Content-Type": "application/octet-stream"}}, {"type": "bytes", "value": [0, 1, 2]}),
], ids=["json-object", "json-list", "text", "text-latin1", "octet-stream"])
def test_body_arrives_as_the_content_type_says(no_models, kwargs, want):
    resp = no_models.post("/", **kwargs)
    assert resp.status_code == 200, resp.text
    assert resp.json() == want


def test_form_body_arrives_as_form_data(no_models):
    resp = no_models.post("/", data={"name": "iris", "n": "3"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["value"] == {"name": "iris", "n": "3"}


def test_post_predict_runs_after_the_response(no_models):
    resp = no_models.post("/?kind=str&tag=first", data="there", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 200, resp.text
    assert resp.text == "hello, there"

    def written():
        lines = no_models.post_file.read_text().splitlines() if no_models.post_file.exists() else []
        return [json.loads(line) for line in lines if json.loads(line)["tag"] == "first"]

    records = wait_for(written, timeout=10, message="post_predict's file")
    assert records == [{"tag": "first", "status": 200, "mimetype": "text/plain", "payload": "there"}]


def test_post_predict_error_is_logged_and_the_response_stands(no_models):
    resp = no_models.post("/?kind=list&tag=raise", json={})
    assert resp.status_code == 200, resp.text
    assert resp.json() == [1, 2.5, "three"]
    wait_for(lambda: "post_predict failed on purpose" in no_models.log(), timeout=10, message="post_predict's error in the log")
    assert "ValueError: post_predict failed on purpose" in no_models.log()
    assert no_models.post("/?kind=str", data="again", headers={"Content-Type": "text/plain"}).text == "hello, again"
