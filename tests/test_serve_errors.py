"""What a user sees when something is wrong: a bad spec or predictor, bad requests, failing predictors; plus the
read-only routes and a clean stop on SIGTERM."""

from __future__ import annotations

import threading
import time

import pytest

from scripts.model_factory import IRIS_BIAS, IRIS_BIAS_V2, IRIS_WEIGHTS, write_python_linear
from tests.helpers import serving, write_api, write_spec
from tests.replica_proc import wait_for
from tests.predictors import json_predictor, LINEAR

PREDICTOR = json_predictor("""
def predict(self, payload, query_params):
    if "fail" in query_params:
        raise RuntimeError("the predictor broke: " + query_params["fail"])
    if "started" in query_params:
        open(query_params["started"], "w").close()
    if "sleep" in query_params:
        time.sleep(float(query_params["sleep"]))
    model = self.client.get_model(query_params.get("model", "iris"), query_params.get("version", "latest"))
    return {"scores": np.asarray(payload["x"]) @ model["weights"] + model["bias"]}
""", load=LINEAR)

X = [5.1, 3.5, 1.4, 0.2]


def _write(folder):
    write_python_linear(folder / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    write_python_linear(folder / "models" / "iris" / "2", IRIS_WEIGHTS, IRIS_BIAS_V2)
    return write_api(folder, PREDICTOR, type="python", name="iris",
                     models={"paths": [{"name": "iris", "model_path": "models/iris"}]})


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    folder = tmp_path_factory.mktemp("errors")
    with serving(_write(folder), folder / "state") as r:
        yield r


# -- start-up errors ---------------------------------------------------------------------------------------------

def test_spec_error_stops_startup_naming_the_key_path(tmp_path, replica):
    (tmp_path / "predictor.py").write_text("class PythonPredictor:\n    def __init__(self, config): pass\n"
                                           "    def predict(self, payload): return payload\n")
    spec = write_spec(tmp_path, """
        - name: iris
          kind: RealtimeAPI
          predictor:
            type: python
            path: predictor.py
            procesess_per_replica: 2
    """)
    r = replica(spec, wait=False)
    assert r.wait_exit(30) != 0
    log = r.log()
    assert "[0].predictor.procesess_per_replica" in log
    assert "did you mean 'processes_per_replica'" in log


@pytest.mark.parametrize("ptype, source, named", [
    ("python", """
        class PythonPredictor:
            def __init__(self, config):
                pass

            def predict(self, payload, request):
                return payload
     """, ["PythonPredictor.predict", "'request'"]),
    ("onnx", """
        class ONNXPredictor:
            def __init__(self, client, config):
                self.client = client

            def predict(self, payload):
                return self.client.predict(payload)
     """, ["ONNXPredictor.__init__", "'client'", "'onnx_client'"]),
    ("python-with-models", """
        class PythonPredictor:
            def __init__(self, config, python_client):
                self.client = python_client

            def predict(self, payload):
                return payload
     """, ["PythonPredictor.load_model is missing"]),
], ids=["predict-arg", "init-arg", "no-load_model"])
def test_bad_predictor_signature_stops_startup_naming_the_argument(tmp_path, replica, ptype, source, named):
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "model.onnx").write_bytes(b"never loaded")
    models = {"model_path": "models/m"} if ptype != "python" else {}
    spec = write_api(tmp_path, source, type=ptype.split("-")[0], **models)
    r = replica(spec, wait=False)
    assert r.wait_exit(30) != 0
    log = r.log()
    assert all(n in log for n in named), log


def test_predictor_init_exception_stops_startup_with_its_traceback(tmp_path, replica):
    spec = write_api(tmp_path, """
        class PythonPredictor:
            def __init__(self, config):
                raise KeyError("config key 'threshold' is missing")

            def predict(self, payload):
                return payload
    """, type="python")
    r = replica(spec, wait=False)
    assert r.wait_exit(60) != 0
    log = r.log()
    assert "KeyError" in log and "config key 'threshold' is missing" in log
    assert "predictor.py" in log


# -- request errors ----------------------------------------------------------------------------------------------

def test_unknown_model_is_404_naming_the_model(iris):
    resp = iris.post("/?model=tulip", json={"x": X})
    assert resp.status_code == 404, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert set(resp.json()) == {"error"}
    assert "tulip" in resp.json()["error"]


def test_unknown_version_is_404(iris):
    resp = iris.post("/?version=7", json={"x": X})
    assert resp.status_code == 404, resp.text
    assert "7" in resp.json()["error"]


@pytest.mark.parametrize("version", ["abc", "-1", "1.5", "v2"])
def test_bad_version_string_is_400(iris, version):
    resp = iris.post("/", params={"version": version}, json={"x": X})
    assert resp.status_code == 400, resp.text
    assert set(resp.json()) == {"error"}
    assert version in resp.json()["error"]


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe"], ids=["broken", "empty", "not-utf8"])
def test_malformed_json_is_400(iris, body):
    resp = iris.post("/", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert set(resp.json()) == {"error"}


def test_predictor_exception_is_500_with_a_request_id_and_no_secret(iris):
    """The exception's message may hold anything the predictor saw (a key, a row of data): it goes to the log,
    under the request id the client gets in the body, the X-Request-ID header and the access line."""
    resp = iris.post("/?fail=marker-42", json={"x": X})
    assert resp.status_code == 500, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    rid = resp.json()["request_id"]
    assert rid and resp.headers["X-Request-ID"] == rid and rid in resp.json()["error"]
    assert "marker-42" not in resp.text and "RuntimeError" not in resp.text
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    wait_for(lambda: "marker-42" in iris.log() and " 500 " in iris.log(), timeout=10, message="the error logged")
    log = iris.log()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: the predictor broke: marker-42" in log
    assert f"(request {rid})" in log  # the logged exception carries the id
    assert any(" 500 " in line and line.endswith(rid) for line in log.splitlines() if "[access " in line)
    assert "predictor.py" in log  # the user's own frame is in the logged traceback


def test_a_request_id_sent_by_the_client_is_kept_and_an_odd_one_replaced(iris):
    assert iris.post("/", json={"x": X}, headers={"X-Request-ID": "lb-abc.123"}).headers["X-Request-ID"] == "lb-abc.123"
    odd = iris.post("/", json={"x": X}, headers={"X-Request-ID": "a b<script>"}).headers["X-Request-ID"]
    assert odd != "a b<script>" and len(odd) == 16


def test_replica_keeps_serving_after_errors(iris):
    iris.post("/?fail=again", json={"x": X})
    resp = iris.post("/", json={"x": X})
    assert resp.status_code == 200, resp.text


# -- read-only routes --------------------------------------------------------------------------------------------

def test_get_root_describes_the_api(iris):
    resp = iris.get("/")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "POST" in resp.text
    assert "model iris: v2 AVAILABLE, v1 AVAILABLE" in resp.text


@pytest.mark.parametrize("path, status", [("/healthz", "ok"), ("/readyz", "ready")])
def test_health_routes(iris, path, status):
    resp = iris.get(path)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == status


def test_models_lists_every_version(iris):
    resp = iris.get("/v1/models")
    assert resp.status_code == 200, resp.text
    models = {m["name"]: m for m in resp.json()["models"]}
    assert set(models) == {"iris"}
    rows = {row["version"]: row for row in models["iris"]["model_version_status"]}
    assert set(rows) == {"1", "2"}
    assert all(row["state"] == "AVAILABLE" and row["disk"] and row["memory"] for row in rows.values())


def test_model_and_version_routes(iris):
    model = iris.get("/v1/models/iris")
    assert model.status_code == 200, model.text
    assert model.json()["name"] == "iris"
    version = iris.get("/v1/models/iris/versions/2")
    assert version.status_code == 200, version.text
    assert [row["version"] for row in version.json()["model_version_status"]] == ["2"]


@pytest.mark.parametrize("path", ["/v1/models/tulip", "/v1/models/tulip/versions/1", "/v1/models/iris/versions/9"])
def test_unknown_model_routes_are_404(iris, path):
    resp = iris.get(path)
    assert resp.status_code == 404, resp.text
    assert set(resp.json()) == {"error"}


# -- stopping ----------------------------------------------------------------------------------------------------

def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path, replica):
    r = replica(_write(tmp_path))
    result = {}

    started = tmp_path / "started"

    def slow_request():
        result["resp"] = r.post("/", params={"sleep": "1.5", "started": str(started)}, json={"x": X})

    t = threading.Thread(target=slow_request)
    t.start()
    wait_for(started.exists, timeout=20, message="the slow request reaching the predictor")
    assert r.stop() == 0
    t.join(10)
    assert result["resp"].status_code == 200, result["resp"].text
    assert "replica stopped" in r.log()
