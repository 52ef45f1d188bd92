"""A model cache bounded in measured bytes (`predictor.models.cache_memory`) and workers recycled by their
memory (`--worker-max-rss`), against real replicas with numpy and ONNX models of tens to hundreds of MB."""

from __future__ import annotations

import random

import numpy as np
import psutil
import pytest
import requests

from tests.helpers import write_api
from tests.replica_proc import wait_for
from workers import memory

MiB = 1 << 20

NUMPY_PREDICTOR = """
import os

import numpy as np

KEPT = []  # what a leaking predictor never lets go of


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.leak = int(config.get("leak_mib", 0))

    def load_model(self, model_path):
        if self.leak:
            KEPT.append(np.ones(self.leak << 20, dtype=np.uint8))
        return np.load(os.path.join(model_path, "weights.npy"))

    def predict(self, query_params):
        weights = self.client.get_model(query_params["model"])
        return {"size": int(weights.nbytes), "first": float(weights[0])}
"""


def _numpy_models(folder, sizes_mib: dict[str, int]):
    for name, mib in sizes_mib.items():
        (folder / name).mkdir(parents=True)
        np.save(folder / name / "weights.npy", np.full(mib * MiB // 8, 1.5, dtype=np.float64))
    return folder


def _rss(r) -> int:
    return sum(psutil.Process(p).memory_info().rss for p in r.worker_pids())


def _sizes(r) -> dict[str, int]:
    out = {}
    for model in r.get("/v1/models", timeout=10).json()["models"]:
        for v in model["model_version_status"]:
            if v["memory"] and v["state"] == "AVAILABLE":
                out[model["name"]] = v["memory_bytes"]
    return out


def test_measuring_a_block_sees_what_it_allocated():
    with memory.measuring() as grown:
        block = np.ones(64 * MiB, dtype=np.uint8)
    assert 0.95 * 64 * MiB <= grown.bytes <= 1.1 * 64 * MiB
    del block


def test_weights_mapped_from_the_version_count_in_full(tmp_path):
    """np.load(mmap_mode="r") and ONNX external data map a file: nothing is resident at the load, the whole
    mapping counts; a mapping of some other folder does not."""
    version, other = tmp_path / "v", tmp_path / "other"
    version.mkdir()
    other.mkdir()
    np.save(version / "w.npy", np.zeros(32 * MiB, dtype=np.uint8))
    np.save(other / "x.npy", np.zeros(16 * MiB, dtype=np.uint8))
    with memory.measuring(version) as grown:
        w = np.load(version / "w.npy", mmap_mode="r")
        x = np.load(other / "x.npy", mmap_mode="r")
    assert 32 * MiB <= grown.bytes <= 33 * MiB
    del w, x


def test_the_cache_holds_its_byte_budget_with_models_of_different_sizes(replica, tmp_path):
    models = _numpy_models(tmp_path / "models", {"m50": 50, "m100": 100, "m150": 150, "m200": 200})
    spec = write_api(tmp_path / "api", NUMPY_PREDICTOR, type="python",
                     models={"dir": str(models), "cache_memory": "400Mi", "disk_cache_size": 4},
                     processes_per_replica=1, threads_per_process=2)
    r = replica(spec)
    start = _rss(r)
    bound = 1.2 * 400 * MiB + 100 * MiB
    rng = random.Random(3)
    peak = 0
    for _ in range(30):
        name = rng.choice(["m50", "m100", "m150", "m200"])  # 500 MiB together: evictions by bytes
        answer = r.post(f"/?model={name}", json={}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["size"] == int(name[1:]) * MiB
        peak = max(peak, _rss(r) - start)
        assert _rss(r) - start <= bound, (name, (_rss(r) - start) / MiB)
    sizes = _sizes(r)
    assert sizes and sum(sizes.values()) <= 400 * MiB, sizes
    for name, measured in sizes.items():  # measured at the load: within a quarter of the weights
        assert abs(measured - int(name[1:]) * MiB) <= 0.25 * int(name[1:]) * MiB, (name, measured / MiB)
    metrics = r.get("/metrics").text
    assert "replica_cache_memory_budget_bytes 4.194304e+08" in metrics  # 400Mi
    assert 'replica_model_memory_bytes{model="' in metrics
    assert "freed, making room for" in r.log()  # an eviction says how much it freed


def test_a_model_larger_than_the_whole_budget_is_refused_with_its_reason(replica, tmp_path):
    models = _numpy_models(tmp_path / "models", {"small": 20, "huge": 120})
    spec = write_api(tmp_path / "api", NUMPY_PREDICTOR, type="python",
                     models={"dir": str(models), "cache_memory": "100Mi", "disk_cache_size": 2},
                     processes_per_replica=1)
    r = replica(spec)
    start = _rss(r)
    answer = r.post("/?model=huge", json={}, timeout=30)
    assert answer.status_code == 503, answer.text
    assert "cache_memory" in answer.json()["error"] and "raise cache_memory" in answer.json()["error"]
    assert _rss(r) - start < 60 * MiB  # refused before it was loaded
    assert r.post("/?model=small", json={}, timeout=30).status_code == 200


ONNX_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        return self.client.predict({"index": [int(payload["index"])]}, query_params["model"])
"""


def _gather_onnx(path, floats: int) -> None:
    """An ONNX model whose weights are one large initializer that a Gather reads at run time (nothing a
    session could fold away)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(floats, dtype=np.float32), "weights")
    node = helper.make_node("Gather", ["weights", "index"], ["value"], axis=0)
    graph = helper.make_graph([node], "gather", [helper.make_tensor_value_info("index", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, [1])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_onnx_versions_are_measured_and_bounded_by_their_bytes(replica, tmp_path):
    models = tmp_path / "models"
    for name, mib in (("w60", 60), ("w120", 120)):
        _gather_onnx(models / name / "model.onnx", mib * MiB // 4)
    spec = write_api(tmp_path / "api", ONNX_PREDICTOR, type="onnx",
                     models={"dir": str(models), "cache_memory": "150Mi", "disk_cache_size": 2},
                     processes_per_replica=1)
    r = replica(spec)
    start = _rss(r)
    for name in ("w60", "w120", "w60", "w120"):  # 180 MiB together: each load evicts the other
        answer = r.post(f"/?model={name}", json={"index": 7}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert _rss(r) - start <= 1.2 * 150 * MiB + 100 * MiB
        [(loaded, measured)] = _sizes(r).items()
        assert loaded == name and abs(measured - int(name[1:]) * MiB) <= 0.25 * int(name[1:]) * MiB, measured / MiB


def test_a_leaking_worker_is_recycled_past_worker_max_rss_without_a_failed_request(replica, tmp_path):
    models = _numpy_models(tmp_path / "models", {"a": 1, "b": 1})
    spec = write_api(tmp_path / "api", NUMPY_PREDICTOR, type="python", config={"leak_mib": 60},
                     models={"dir": str(models), "cache_size": 1, "disk_cache_size": 2},
                     processes_per_replica=1, threads_per_process=2)
    r = replica(spec, extra_args=("--worker-max-rss", "600Mi"))
    [first] = r.worker_pids()
    codes, peak = [], 0
    for i in range(60):  # every request a miss: each load keeps 60 MiB more
        codes.append(requests.post(f"{r.base}/?model={'ab'[i % 2]}", json={}, timeout=60).status_code)
        peak = max([peak] + [psutil.Process(p).memory_info().rss for p in r.worker_pids()])
        if first not in r.worker_pids() and i > 20:
            break
    assert first not in r.worker_pids(), "the leaking worker was not replaced"
    assert codes == [200] * len(codes)
    assert peak <= 1.3 * 600 * MiB, peak / MiB
    assert "passed --worker-max-rss" in r.log()


@pytest.mark.parametrize("flag, message", [("--worker-max-rss=lots", "is not a memory quantity"),
                                           ("--worker-max-rss=100Mi", "must be above predictor.models.cache_memory")])
def test_worker_max_rss_that_cannot_work_is_refused_at_start(replica, tmp_path, flag, message):
    models = _numpy_models(tmp_path / "models", {"a": 1})
    spec = write_api(tmp_path / "api", NUMPY_PREDICTOR, type="python",
                     models={"dir": str(models), "cache_memory": "200Mi", "disk_cache_size": 2})
    r = replica(spec, wait=False, extra_args=(flag,))
    assert r.wait_exit(30) == 2
    assert message in r.log()


def test_a_memory_cgroup_limit_refuses_a_budget_over_it_and_sizes_the_default(replica, tmp_path, memory_cgroup):
    group = memory_cgroup(2 << 30)
    models = _numpy_models(tmp_path / "models", {"a": 1})
    over = write_api(tmp_path / "over", NUMPY_PREDICTOR, type="python",
                     models={"dir": str(models), "cache_memory": "3Gi", "disk_cache_size": 2})
    r = replica(over, wait=False, cgroup=group)
    assert r.wait_exit(30) == 2
    assert "cache_memory: 3.0 GiB is more than this machine's memory limit (2.0 GiB" in r.log()
    derived = write_api(tmp_path / "derived", NUMPY_PREDICTOR, type="python",
                        models={"dir": str(models), "disk_cache_size": 2})
    r = replica(derived, cgroup=group)
    assert r.post("/?model=a", json={}, timeout=30).status_code == 200
    [line] = [ln for ln in r.get("/metrics").text.splitlines() if ln.startswith("replica_cache_memory_budget_bytes ")]
    assert float(line.split()[1]) == int(0.6 * (2 << 30))  # 60% of the limit
