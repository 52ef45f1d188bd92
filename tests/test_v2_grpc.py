"""The Open Inference Protocol (KServe V2) over gRPC (`--grpc-port`), driven by Triton's own client
(`tritonclient.grpc`) against real replicas.

The test process never imports the replica's generated modules (workers/protos): tritonclient defines the same
message names, and two such modules collide in one process. What the replica's .proto says is read in a child
interpreter and compared with tritonclient's.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Iterator

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2, descriptor_pool
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from scripts.model_factory import IRIS_BIAS, IRIS_SAMPLES, IRIS_WEIGHTS, write_onnx_linear, write_onnx_mixed, write_tf_linear
from tests.helpers import serving, write_api
from tests.replica_proc import ReplicaProcess, free_port, wait_for

ECHO = """
import os
import time

from workers.errors import Unavailable


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if isinstance(payload, dict) and "boom" in payload:
            raise RuntimeError("the secret is hunter2")
        if isinstance(payload, dict) and "slow" in payload:
            time.sleep(2)
        if isinstance(payload, dict) and "busy" in payload:
            raise Unavailable("too busy, come back later", retry_after=3)
        return {"pid": os.getpid(), **payload} if isinstance(payload, dict) else payload
"""


FEATURES = np.asarray([x for x, _ in IRIS_SAMPLES], dtype=np.float32)
SCORES = FEATURES @ np.asarray(IRIS_WEIGHTS, dtype=np.float32) + np.asarray(IRIS_BIAS, dtype=np.float32)


def client(port: int) -> grpcclient.InferenceServerClient:
    """A client on a connection of its own (grpcio shares one between channels to the same address otherwise),
    so that each lands on whichever worker the kernel picks."""
    return grpcclient.InferenceServerClient(f"127.0.0.1:{port}", channel_args=[("grpc.use_local_subchannel_pool", 1)])


@dataclass
class Served:
    replica: ReplicaProcess
    port: int  # gRPC
    client: grpcclient.InferenceServerClient


@contextlib.contextmanager
def grpc_replica(spec, state_dir, **kw) -> Iterator[Served]:
    """A replica serving gRPC on a free port of its own beside its HTTP port, and a client for it."""
    port = free_port()
    with serving(spec, state_dir, extra_args=("--grpc-port", str(port)), **kw) as r:
        c = client(port)
        try:
            yield Served(r, port, c)
        finally:
            c.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in /metrics text whose labels include `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()))


def status_of(call) -> str:
    """The gRPC status code a call fails with, as tritonclient says it ("StatusCode.NOT_FOUND")."""
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status()


def fp32_input(values: np.ndarray, name: str = "input") -> grpcclient.InferInput:
    x = grpcclient.InferInput(name, list(values.shape), "FP32")
    x.set_data_from_numpy(values)
    return x


def listening_pids(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


# -- the .proto ------------------------------------------------------------------------------------------------

def test_the_proto_is_wire_compatible_with_tritonclients():
    """Every message and field of workers/protos/inference.proto has the number, type and cardinality of the
    field of the same name in Triton's grpc_service.proto, and every RPC its path and message types."""
    code = ("import sys; from workers.protos import inference_pb2, inference_pb2_grpc; "
            "sys.stdout.buffer.write(inference_pb2.DESCRIPTOR.serialized_pb)")
    ours = descriptor_pb2.FileDescriptorProto.FromString(
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    pool = descriptor_pool.DescriptorPool()  # not the default one, which tritonclient's messages are in
    pool.Add(ours)
    mine = pool.FindFileByName(ours.name)
    assert mine.package == "inference"
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    service = mine.services_by_name["GRPCInferenceService"]
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}
    checked = set()

    def same(message, triton) -> None:
        assert message.full_name == triton.full_name
        checked.add(message.full_name)
        for field in message.fields:
            other = triton.fields_by_name[field.name]
            assert (field.number, field.type, field.is_repeated) == (other.number, other.type, other.is_repeated), \
                field.full_name
            if field.message_type is not None and field.message_type.full_name not in checked:
                same(field.message_type, other.message_type)
        for oneof in message.oneofs:
            assert [f.name for f in oneof.fields] == [f.name for f in triton.oneofs_by_name[oneof.name].fields]

    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        same(method.input_type, other.input_type)
        same(method.output_type, other.output_type)
    assert "inference.InferTensorContents" in checked and "inference.InferParameter" in checked


def test_the_http_app_imports_no_generated_module():
    """workers/app.py (and so a process that also imports tritonclient, as a test does) never loads the replica's
    generated modules: only a worker that serves gRPC does."""
    code = "import sys, workers.app; print(sorted(m for m in sys.modules if m.startswith(('workers.protos', 'grpc'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- health, metadata, processes -------------------------------------------------------------------------------

def test_health_and_server_metadata_from_two_workers_that_both_serve_the_port(tmp_path):
    spec = write_api(tmp_path, ECHO, type="python", name="echo", processes_per_replica=2)
    with grpc_replica(spec, tmp_path / "state") as s:
        workers = set(s.replica.worker_pids())
        assert len(workers) == 2
        wait_for(lambda: listening_pids(s.port) == workers, message="both workers listening on the gRPC port")
        assert s.client.is_server_live() and s.client.is_server_ready()
        meta = s.client.get_server_metadata(as_json=True)
        assert meta["name"] == "model-replica" and "model_repository" in meta["extensions"]
        # Each new connection lands on one of the two sockets: both workers answer predictions.
        answered = set()
        for _ in range(200):
            c = client(s.port)
            try:
                answered.add(int(c.infer("echo", [fp32_input(FEATURES[:1], "x")]).as_numpy("pid")))
            finally:
                c.close()
            if answered == workers:
                break
        assert answered == workers
        # A predictor's exception is INTERNAL naming the call's id; its text stays in the log.
        with pytest.raises(InferenceServerException) as e:
            s.client.infer("echo", [fp32_input(FEATURES[:1], "boom")], headers={"x-request-id": "rid-42"})
        assert e.value.status() == "StatusCode.INTERNAL"
        assert "rid-42" in e.value.message() and "hunter2" not in e.value.message()
        wait_for(lambda: "(request rid-42)" in s.replica.log() and "hunter2" in s.replica.log(), message="logged")
        # The replica's 503 is UNAVAILABLE, its Retry-After in the trailing metadata.
        busy = service_pb2.ModelInferRequest(model_name="echo", inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name="busy", datatype="FP32", shape=[1], contents=service_pb2.InferTensorContents(fp32_contents=[1.0]))])
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel, pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(busy, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.details() == "too busy, come back later"
        assert ("retry-after", "3") in e.value.trailing_metadata()
    assert listening_pids(s.port) == set()  # each worker stopped its server on the way out


def test_a_stopping_replica_finishes_the_calls_in_flight(tmp_path):
    spec = write_api(tmp_path, ECHO, type="python", name="echo")
    with grpc_replica(spec, tmp_path / "state") as s:
        answer: dict = {}

        def call() -> None:
            answer["pid"] = s.client.infer("echo", [fp32_input(FEATURES[:1], "slow")]).as_numpy("pid")

        slow = threading.Thread(target=call)
        slow.start()
        wait_for(lambda: metric(s.replica.get("/metrics").text, "replica_requests_in_flight") == 1,
                 message="the slow call in flight")
        assert s.replica.stop() == 0
        slow.join(10)
        assert "pid" in answer  # answered, not cut off by the stop
    assert listening_pids(s.port) == set()


def test_no_grpc_port_no_grpc_server(tmp_path):
    spec = write_api(tmp_path, ECHO, type="python", name="echo")
    with serving(spec, tmp_path / "state") as r:
        pids = {r.proc.pid, *r.worker_pids()}
        assert {c.laddr.port for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.pid in pids} == {r.port}


# -- start-up refusals: exit status 2, one line naming the fix -------------------------------------------------

def _refused(r: ReplicaProcess) -> str:
    assert r.wait_exit(60) == 2
    log = r.log()
    lines = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in log and "serving on" not in log, log
    return lines[0]


def test_grpc_port_equal_to_the_http_port_is_refused(tmp_path):
    spec = write_api(tmp_path, ECHO, type="python", name="echo")
    port = free_port()
    r = ReplicaProcess(spec, tmp_path / "state", port=port, extra_args=("--grpc-port", str(port))).start()
    try:
        line = _refused(r)
    finally:
        r.stop()
    assert "--grpc-port" in line and "--port" in line and str(port) in line


def test_grpc_port_in_use_is_refused(tmp_path):
    spec = write_api(tmp_path, ECHO, type="python", name="echo")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = ReplicaProcess(spec, tmp_path / "state", extra_args=("--grpc-port", str(port))).start()
        try:
            line = _refused(r)
        finally:
            r.stop()
    assert str(port) in line and "in use" in line and "--grpc-port" in line and "REPLICA_GRPC_PORT" in line




# -- ONNX models -----------------------------------------------------------------------------------------------

ONNX_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        return self.client.predict(payload, query_params["model"])
"""


@pytest.fixture(scope="module")
def onnx_grpc(tmp_path_factory):
    """Two ONNX models: `iris` (FP32 in; FP32 and INT64 out) and `mixed` (FP32, INT64 and BYTES)."""
    folder = tmp_path_factory.mktemp("grpc-onnx")
    write_onnx_linear(folder / "models" / "iris" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    write_onnx_mixed(folder / "models" / "mixed" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(folder, ONNX_PREDICTOR, type="onnx", models={"dir": "models"})
    with grpc_replica(spec, folder / "state") as s:
        yield s


def tensors_of(meta: dict, key: str) -> list[tuple]:
    return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[key]]


def test_onnx_model_ready_and_metadata(onnx_grpc):
    c = onnx_grpc.client
    assert c.is_model_ready("iris") and c.is_model_ready("iris", "1")
    meta = c.get_model_metadata("iris", as_json=True)
    assert (meta["name"], meta["versions"], meta["platform"]) == ("iris", ["1"], "onnxruntime_onnx")
    assert tensors_of(meta, "inputs") == [("input", "FP32", [-1, 4])]
    assert tensors_of(meta, "outputs") == [("scores", "FP32", [-1, 3]), ("label", "INT64", [-1])]
    mixed = c.get_model_metadata("mixed", as_json=True)
    assert tensors_of(mixed, "inputs") == [("features", "FP32", [-1, 4]), ("counts", "INT64", [-1]),
                                           ("names", "BYTES", [-1])]


def test_onnx_infer_fp32_answers_every_output_raw_with_the_request_id(onnx_grpc):
    result = onnx_grpc.client.infer("iris", [fp32_input(FEATURES)], request_id="req-7")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("iris", "1", "req-7")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("scores", "FP32", [3, 3]), ("label", "INT64", [3])]
    assert len(response.raw_output_contents) == 2  # raw inputs, raw outputs (as Triton answers)
    np.testing.assert_allclose(result.as_numpy("scores"), SCORES, rtol=1e-5)
    assert result.as_numpy("label").tolist() == [0, 1, 2]


def test_onnx_infer_only_the_requested_outputs(onnx_grpc):
    result = onnx_grpc.client.infer("iris", [fp32_input(FEATURES[:1])],
                                    outputs=[grpcclient.InferRequestedOutput("label")])
    assert [o.name for o in result.get_response().outputs] == ["label"]
    assert result.as_numpy("label").tolist() == [0]


def test_onnx_infer_int64_and_bytes(onnx_grpc):
    counts = grpcclient.InferInput("counts", [3], "INT64")
    counts.set_data_from_numpy(np.asarray([1, -2, 2**40], dtype=np.int64))
    names = grpcclient.InferInput("names", [3], "BYTES")
    names.set_data_from_numpy(np.asarray([b"a", "h\u00e9".encode(), b""], dtype=object))
    result = onnx_grpc.client.infer("mixed", [fp32_input(FEATURES, "features"), counts, names],
                                    outputs=[grpcclient.InferRequestedOutput(n) for n in ("doubled", "names_out")])
    assert result.as_numpy("doubled").tolist() == [2, -4, 2**41]
    assert result.as_numpy("names_out").tolist() == [b"a", "h\u00e9".encode(), b""]


def test_onnx_infer_from_typed_contents_answers_typed_contents(onnx_grpc):
    """A request with each input's `contents` (no raw_input_contents) is answered with `contents`; tritonclient
    always sends raw bytes, so this request is built from its messages."""
    tensor, contents = service_pb2.ModelInferRequest.InferInputTensor, service_pb2.InferTensorContents
    request = service_pb2.ModelInferRequest(model_name="mixed", id="typed", inputs=[
        tensor(name="features", datatype="FP32", shape=[2, 4],
               contents=contents(fp32_contents=FEATURES[:2].reshape(-1).tolist())),
        tensor(name="counts", datatype="INT64", shape=[2], contents=contents(int64_contents=[3, 4])),
        tensor(name="names", datatype="BYTES", shape=[2], contents=contents(bytes_contents=[b"x", b"yz"]))])
    with grpc.insecure_channel(f"127.0.0.1:{onnx_grpc.port}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert not response.raw_output_contents and response.id == "typed"
    out = {o.name: o for o in response.outputs}
    assert list(out) == ["scores", "label", "doubled", "names_out"]
    np.testing.assert_allclose(np.reshape(out["scores"].contents.fp32_contents, [2, 3]), SCORES[:2], rtol=1e-5)
    assert list(out["label"].contents.int64_contents) == [0, 1]
    assert list(out["doubled"].contents.int64_contents) == [6, 8]
    assert list(out["names_out"].contents.bytes_contents) == [b"x", b"yz"]


def test_onnx_errors_are_grpc_status_codes_and_counted(onnx_grpc):
    c = onnx_grpc.client
    before = onnx_grpc.replica.get("/metrics").text
    wrong_shape = fp32_input(FEATURES[:, :3])
    assert status_of(lambda: c.infer("iris", [wrong_shape])) == "StatusCode.INVALID_ARGUMENT"
    wrong_type = grpcclient.InferInput("input", [1, 4], "INT32")
    wrong_type.set_data_from_numpy(np.ones((1, 4), dtype=np.int32))
    assert status_of(lambda: c.infer("iris", [wrong_type])) == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: c.infer("nope", [fp32_input(FEATURES)])) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: c.infer("iris", [fp32_input(FEATURES)], model_version="7")) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: c.get_model_metadata("nope")) == "StatusCode.NOT_FOUND"
    c.infer("iris", [fp32_input(FEATURES)])
    after = onnx_grpc.replica.get("/metrics").text
    for labels, n in (({"model": "iris", "code": "400"}, 2), ({"model": "", "code": "404"}, 1),
                      ({"model": "iris", "code": "404"}, 1), ({"model": "iris", "version": "1", "code": "200"}, 1)):
        assert metric(after, "replica_requests_total", **labels) - metric(before, "replica_requests_total", **labels) \
            == n, labels
    assert metric(after, "replica_requests_in_flight") == 0


# -- the model repository extension ----------------------------------------------------------------------------

def in_memory(r: ReplicaProcess) -> set[str]:
    """The models with a version in memory, as GET /v1/models on the HTTP port says."""
    return {m["name"] for m in r.get("/v1/models").json()["models"] for v in m["model_version_status"] if v["memory"]}


def test_repository_index_without_caching(onnx_grpc):
    c = onnx_grpc.client
    index = c.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} == {("iris", "1", "READY"), ("mixed", "1", "READY")}
    c.load_model("iris")  # in memory already: nothing to do
    assert status_of(lambda: c.unload_model("iris")) == "StatusCode.INVALID_ARGUMENT"  # needs model caching
    assert status_of(lambda: c.load_model("nope")) == "StatusCode.NOT_FOUND"
    assert in_memory(onnx_grpc.replica) == {"iris", "mixed"}


def test_repository_load_and_unload_with_caching(tmp_path):
    for name in ("a", "b"):
        write_onnx_linear(tmp_path / "models" / name / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(tmp_path, ONNX_PREDICTOR, type="onnx",
                     models={"dir": "models", "cache_size": 1, "disk_cache_size": 2})
    with grpc_replica(spec, tmp_path / "state") as s:
        c, r = s.client, s.replica
        assert in_memory(r) == set()
        assert {m["state"] for m in c.get_model_repository_index(as_json=True)["models"]} == {"UNAVAILABLE"}
        c.load_model("a")
        assert in_memory(r) == {"a"}
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel:  # tritonclient never asks for ready only
            ready = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                service_pb2.RepositoryIndexRequest(ready=True), timeout=30)
        assert [(m.name, m.version, m.state) for m in ready.models] == [("a", "1", "READY")]
        c.load_model("b")  # cache_size 1: a makes room
        wait_for(lambda: in_memory(r) == {"b"}, message="b alone in memory")
        c.unload_model("b")
        wait_for(lambda: in_memory(r) == set(), message="b unloaded")
        assert c.infer("b", [fp32_input(FEATURES)]).as_numpy("label").tolist() == [0, 1, 2]  # brought back
        assert in_memory(r) == {"b"}


# -- TensorFlow, with model caching ----------------------------------------------------------------------------

TF_PREDICTOR = """
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        return self.client.predict(payload, query_params["model"])
"""


@pytest.fixture(scope="module")
def tf_grpc(tmp_path_factory):
    """One SavedModel (`x` FP32 [-1, 4] -> `scores`, `label`) served as two models, `iris` and `twin`, with room
    for one in memory."""
    folder = tmp_path_factory.mktemp("grpc-tensorflow")
    write_tf_linear(folder / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS, extra_signature=False)
    shutil.copytree(folder / "models" / "iris", folder / "models" / "twin")
    spec = write_api(folder, TF_PREDICTOR, type="tensorflow",
                     models={"dir": "models", "cache_size": 1, "disk_cache_size": 2})
    with grpc_replica(spec, folder / "state") as s:
        yield s


@pytest.mark.tensorflow
def test_tensorflow_metadata_and_infer(tf_grpc):
    c = tf_grpc.client
    assert c.is_model_ready("iris")
    meta = c.get_model_metadata("iris", as_json=True)
    assert (meta["name"], meta["versions"], meta["platform"]) == ("iris", ["1"], "tensorflow_savedmodel")
    assert tensors_of(meta, "inputs") == [("x", "FP32", [-1, 4])]
    assert sorted(tensors_of(meta, "outputs")) == [("label", "INT64", [-1]), ("scores", "FP32", [-1, 3])]
    result = c.infer("iris", [fp32_input(FEATURES, "x")], request_id="tf-1")
    assert result.get_response().id == "tf-1"
    np.testing.assert_allclose(result.as_numpy("scores"), SCORES, rtol=1e-5)
    assert result.as_numpy("label").tolist() == [0, 1, 2]
    only = c.infer("iris", [fp32_input(FEATURES[:1], "x")], outputs=[grpcclient.InferRequestedOutput("label")])
    assert [o.name for o in only.get_response().outputs] == ["label"]


@pytest.mark.tensorflow
def test_tensorflow_errors(tf_grpc):
    c = tf_grpc.client
    assert status_of(lambda: c.infer("iris", [fp32_input(FEATURES[:, :2], "x")])) == "StatusCode.INVALID_ARGUMENT"
    wrong_type = grpcclient.InferInput("x", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(np.ones((1, 4)))
    assert status_of(lambda: c.infer("iris", [wrong_type])) == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: c.infer("nope", [fp32_input(FEATURES, "x")])) == "StatusCode.NOT_FOUND"


@pytest.mark.tensorflow
def test_tensorflow_repository_load_and_unload(tf_grpc):
    c, r = tf_grpc.client, tf_grpc.replica
    c.load_model("twin")  # cache_size 1: whatever is in memory makes room
    wait_for(lambda: in_memory(r) == {"twin"}, timeout=60, message="twin alone in memory")
    index = {(m["name"], m["state"]) for m in c.get_model_repository_index(as_json=True)["models"]}
    assert index == {("twin", "READY"), ("iris", "UNAVAILABLE")}
    c.unload_model("twin")
    wait_for(lambda: in_memory(r) == set(), message="twin unloaded")
