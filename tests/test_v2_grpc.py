"""The Open Inference Protocol (KServe V2) over gRPC (`--grpc-port`), driven by Triton's own client
(`tritonclient.grpc`) against real replicas.

The test process never imports the replica's generated modules (workers/protos): tritonclient defines the same
message names, and two such modules collide in one process. What the replica's .proto says is read in a child
interpreter and compared with tritonclient's.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys

import psutil
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2, descriptor_pool
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from tests.helpers import serving, write_api
from tests.replica_proc import ReplicaProcess, free_port, wait_for

ECHO = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return payload
"""


@contextlib.contextmanager
def grpc_replica(spec, state_dir, **kw):
    """A replica serving gRPC on a free port of its own beside its HTTP port: (replica, gRPC port)."""
    port = free_port()
    with serving(spec, state_dir, extra_args=("--grpc-port", str(port)), **kw) as r:
        yield r, port


def client(port: int) -> grpcclient.InferenceServerClient:
    """A client on a connection of its own (grpcio shares one between channels to the same address otherwise),
    so that each lands on whichever worker the kernel picks."""
    return grpcclient.InferenceServerClient(f"127.0.0.1:{port}", channel_args=[("grpc.use_local_subchannel_pool", 1)])


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
    with grpc_replica(spec, tmp_path / "state") as (r, port):
        workers = set(r.worker_pids())
        assert len(workers) == 2
        wait_for(lambda: listening_pids(port) == workers, message="both workers listening on the gRPC port")
        c = client(port)
        try:
            assert c.is_server_live() and c.is_server_ready()
            meta = c.get_server_metadata(as_json=True)
            assert meta["name"] == "model-replica" and "model_repository" in meta["extensions"]
        finally:
            c.close()
    assert listening_pids(port) == set()  # each worker stopped its server on the way out


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

