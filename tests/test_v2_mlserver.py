"""The replica's Open Inference Protocol (KServe V2) infer route against MLServer 1.7.1's: the same ONNX model
and the same request give the same outputs, datatypes and shapes.

MLServer runs from the benchmarks' own virtualenv (`scripts.bench_lib.servers.ensure_mlserver_venv`, created on
first use under BENCH_VENV_DIR) with the general ONNX runtime of scripts/mlserver_runtime/runtime.py. The model
has inputs and outputs of several datatypes and ranks (scripts.model_factory.write_onnx_mixed): what differs
between two V2 servers is how they encode tensors, and a one-input float model would show little of it. Both
servers are also checked against onnxruntime run here, so that a difference says which side is wrong.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import requests

from scripts import model_factory as mf
from scripts.bench_lib import servers, v2
from tests.helpers import serving, write_api

MODEL = "mixed"
INFER = f"/v2/models/{MODEL}/infer"
INPUTS = {
    "features": np.array([x for x, _ in mf.IRIS_SAMPLES], dtype=np.float32),
    "counts": np.array([0, 3, -2], dtype=np.int64),
    "names": np.array(["setosa", "versicolor", "virginica, ünïcode"], dtype=object),
}
# The outputs asked for: all (none named), a subset in an order other than the model's, one alone.
REQUESTED = [None, ["names_out", "scores"], ["doubled"]]

# The Cortex route's predictor; V2 infer runs the onnxruntime session itself and never calls it.
PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        return self.client.predict(payload)
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2-model")
    return mf.write_onnx_mixed(folder / MODEL / "1" / "model.onnx", mf.IRIS_WEIGHTS, mf.IRIS_BIAS)


@pytest.fixture(scope="session")
def mlserver_python(tmp_path_factory):
    """The MLServer virtualenv's python (made, or reused while its pins stand). Without it (no network, say)
    the tests fail in CI and are skipped elsewhere, with pip's reason."""
    py, why = servers.ensure_mlserver_venv(tmp_path_factory.mktemp("mlserver-venv") / "install.log")
    if py is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"the MLServer virtualenv could not be made: {why}")
        pytest.skip(f"the MLServer virtualenv could not be made: {why}")
    return py


@pytest.fixture(scope="module")
def mlserver(mlserver_python, model_file, tmp_path_factory):
    """MLServer on free ports on 127.0.0.1 serving the model; stopped by PID (its process group) at the end."""
    server = servers.MLServer(mlserver_python, model_file, 1, tmp_path_factory.mktemp("mlserver"), model=MODEL,
                              implementation="runtime.ONNXTensorRuntime")
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def replica(model_file, tmp_path_factory):
    """A replica serving the same file as its one model (`model_path`: the model is named after the API)."""
    folder = tmp_path_factory.mktemp("v2-replica")
    spec = write_api(folder, PREDICTOR, type="onnx", name=MODEL, model_path=str(model_file.parent.parent))
    with serving(spec, folder / "state") as r:
        yield r


def reference(model_file, requested: list[str] | None) -> list[v2.Output]:
    """What onnxruntime itself gives for INPUTS, as V2 outputs."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    names = requested or [o.name for o in session.get_outputs()]
    values = session.run(names, INPUTS)
    return [v2.Output(n, v2.datatype(a), list(a.shape), a) for n, a in zip(names, values)]


def infer(base: str, requested: list[str] | None) -> list[v2.Output]:
    resp = requests.post(base + INFER, json=v2.json_request(INPUTS, requested), timeout=30)
    assert resp.status_code == 200, resp.text
    return v2.answer(resp.content, dict(resp.headers))


def assert_same(got: list[v2.Output], want: list[v2.Output]) -> None:
    """Name, datatype, shape and values of every output, in order; floats within float32's rounding."""
    assert [(o.name, o.datatype, o.shape) for o in got] == [(o.name, o.datatype, o.shape) for o in want]
    for g, w in zip(got, want):
        if g.datatype.startswith("FP"):
            np.testing.assert_allclose(g.data.astype(np.float64), w.data.astype(np.float64), rtol=1e-6, atol=1e-6,
                                       err_msg=g.name)
        else:
            assert g.data.tolist() == w.data.tolist(), g.name


@pytest.mark.parametrize("requested", REQUESTED, ids=["all", "subset", "one"])
def test_mlserver_answers_what_onnxruntime_gives(mlserver, model_file, requested):
    assert_same(infer(mlserver.base, requested), reference(model_file, requested))


@pytest.mark.parametrize("requested", REQUESTED, ids=["all", "subset", "one"])
def test_replica_json_answers_as_mlserver_does(replica, mlserver, requested):
    assert_same(infer(replica.base, requested), infer(mlserver.base, requested))


@pytest.mark.parametrize("binary_outputs", [False, True], ids=["json-out", "binary-out"])
@pytest.mark.parametrize("requested", REQUESTED, ids=["all", "subset", "one"])
def test_replica_binary_request_answers_as_mlserver_json_does(replica, mlserver, requested, binary_outputs):
    """The binary tensor extension (MLServer's REST front has none): the same tensors as raw bytes after the
    JSON header must give what MLServer answers the JSON request with."""
    body, headers = v2.binary_request(INPUTS, requested, binary_outputs=binary_outputs)
    resp = requests.post(replica.base + INFER, data=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert (v2.HEADER_LENGTH in resp.headers) == binary_outputs
    assert_same(v2.answer(resp.content, dict(resp.headers)), infer(mlserver.base, requested))
