"""ONNX versions installed with their weights mapped from the downloaded file (supervisor/onnx_weights.py):
the rewritten model is the same model, anything else is left exactly as it came, and a replica serves both."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from replica.disktree import DiskTree
from scripts.model_factory import ONNX_IR_VERSION, ONNX_OPSET
from supervisor.onnx_weights import WEIGHTS_SUFFIX, NotRewritable, installed_files, rewrite
from tests.helpers import serving, write_api


def _mlp(path: Path, dims: list[int], seed: int = 0, external: bool = False, threshold: int = 1024) -> Path:
    """A chain of MatMul + Add layers (float32), large enough to be rewritten when the dims are."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) * 0.05).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i}"])]
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", dims[-1]])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, location=path.name + ".data",
                    size_threshold=threshold)
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rewritten_model_gives_the_same_outputs_and_keeps_the_download_whole(tmp_path):
    original = _mlp(tmp_path / "orig" / "model.onnx", [256, 512, 512, 8])
    copy = tmp_path / "v" / "model.onnx"
    copy.parent.mkdir()
    copy.write_bytes(original.read_bytes())
    done = rewrite(copy)
    assert done.tensors == 5  # the last bias (8 floats) stays in the graph
    assert done.weights.read_bytes() == original.read_bytes()  # the download itself, renamed
    assert copy.stat().st_size < 4096 and done.graph_sha256 == _sha(copy)
    x = np.random.default_rng(3).standard_normal((5, 256)).astype(np.float32)
    np.testing.assert_array_equal(_run(copy, x), _run(original, x))
    for prepacking in ("0", "1"):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.disable_prepacking", prepacking)
        out = ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(out, _run(original, x), rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 1200), min_size=1, max_size=8), dtype=st.sampled_from(
    [np.float32, np.float16, np.int64, np.int8, np.uint8, np.float64]))
def test_every_initializer_reads_back_the_same(tmp_path_factory, sizes, dtype):
    """Whatever the initializers (sizes around the threshold, any dtype), the rewritten model's tensors,
    external or not, are the original ones."""
    rng = np.random.default_rng(len(sizes))
    arrays = [rng.integers(0, 100, size=n).astype(dtype) for n in sizes]
    arrays.append(np.zeros(300_000, dtype=np.float32))  # over MIN_FILE_BYTES, so the file is rewritten
    inits = [numpy_helper.from_array(a, f"t{i}") for i, a in enumerate(arrays)]
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("t0", inits[0].data_type, [sizes[0]])],
                              initializer=inits)
    folder = tmp_path_factory.mktemp("prop")
    path = folder / "model.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    rewrite(path)
    back = onnx.load(str(path))  # follows the external references
    assert [numpy_helper.to_array(t).tolist() for t in back.graph.initializer] == [a.tolist() for a in arrays]


def test_what_is_not_rewritten_stays_as_it_came(tmp_path):
    small = _mlp(tmp_path / "small" / "model.onnx", [4, 8, 3])
    before = small.read_bytes()
    with pytest.raises(NotRewritable, match="small enough"):
        rewrite(small)
    # Its own external data for the largest tensor, over a megabyte still embedded: left alone all the same.
    own = _mlp(tmp_path / "own" / "model.onnx", [256, 1024, 512, 8], external=True, threshold=1_500_000)
    assert own.stat().st_size > 1 << 20
    with pytest.raises(NotRewritable, match="already has external data"):
        rewrite(own)
    junk = tmp_path / "junk" / "model.onnx"
    junk.parent.mkdir()
    junk.write_bytes(np.random.default_rng(0).bytes(2 << 20))
    junk_bytes = junk.read_bytes()
    with pytest.raises(NotRewritable):
        rewrite(junk)
    assert small.read_bytes() == before and junk.read_bytes() == junk_bytes
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert not list(tmp_path.rglob("*" + WEIGHTS_SUFFIX)) and not list(tmp_path.rglob("*.graph"))


def test_manifest_lists_what_is_on_disk(tmp_path):
    model = _mlp(tmp_path / "model.onnx", [256, 1100, 8])
    sha, size = _sha(model), model.stat().st_size
    files = installed_files(tmp_path, [["model.onnx", size, "etag", sha], ["README", 3, "t", "x"]])
    assert files == [["model.onnx", model.stat().st_size, None, _sha(model)],
                     ["model.onnx.weights", size, "etag", sha], ["README", 3, "t", "x"]]
    assert (tmp_path / "model.onnx.weights").stat().st_size == size


PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        return {"y": self.client.predict({"x": payload}, query_params["model"])[0]}
"""


def test_replica_serves_rewritten_and_external_data_versions(tmp_path):
    models = tmp_path / "models"
    embedded = _mlp(models / "embedded" / "1" / "model.onnx", [256, 512, 512, 8], seed=1)
    own = _mlp(models / "own" / "1" / "model.onnx", [256, 512, 512, 8], seed=2, external=True)
    x = np.random.default_rng(4).standard_normal((2, 256)).astype(np.float32)
    want = {"embedded": _run(embedded, x), "own": _run(own, x)}
    spec = write_api(tmp_path, PREDICTOR, type="onnx", models={"dir": "models"})
    with serving(spec, tmp_path / "state") as r:
        for name in ("embedded", "own"):
            resp = r.post(f"/?model={name}", json=x.tolist())
            assert resp.status_code == 200, resp.text
            np.testing.assert_allclose(resp.json()["y"], want[name], rtol=1e-5, atol=1e-6)
        tree = DiskTree(tmp_path / "state")
        on_disk = {p.name: p for p in tree.version_dir("embedded", 1).iterdir()}
        assert set(on_disk) >= {"model.onnx", "model.onnx.weights"}
        assert on_disk["model.onnx.weights"].read_bytes() == embedded.read_bytes()
        own_dir = tree.version_dir("own", 1)
        assert {p.name: p.read_bytes() for p in own_dir.iterdir() if not p.name.startswith(".")} == {
            p.name: p.read_bytes() for p in own.parent.iterdir()}
        assert tree.damaged("embedded", 1) is None and tree.damaged("own", 1) is None
